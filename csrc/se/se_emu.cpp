// g++ translation unit of the SE kernels against the CUDA emulator (namespace ak::se::emu,
// backend "cuda-emu").
#include "launch.h"
