// g++ translation unit of the SE kernels against the CUDA emulator (attnkernels._C_emu).
#define AK_SE_NS emu
#include "launch.h"
