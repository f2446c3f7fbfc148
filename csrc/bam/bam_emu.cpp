// g++ translation unit of the BAM kernels against the CUDA emulator (namespace ak::bam::emu,
// backend "cuda-emu"). -O1, as se_emu.cpp: the test vehicle, compiled faster; the binding keeps -O2.
#pragma GCC optimize("O1")
#include "launch.h"
