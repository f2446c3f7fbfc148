// g++ translation unit of the SCA kernels against the CUDA emulator (namespace ak::sca::emu,
// backend "cuda-emu"). -O1 as SE's (csrc/se/se_emu.cpp): this build is the test vehicle.
#pragma GCC optimize("O1")
#include "launch.h"
