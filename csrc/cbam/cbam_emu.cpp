// g++ translation unit of the CBAM kernels against the CUDA emulator (namespace ak::cbam::emu,
// backend "cuda-emu"). -O1, as se_emu.cpp: the test vehicle, where compile time counts more than
// the kernels' speed (the emulator's fiber switches dominate its tests).
#pragma GCC optimize("O1")
#include "launch.h"
