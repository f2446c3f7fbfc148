// g++ translation unit of the SE kernels against the CUDA emulator (namespace ak::se::emu,
// backend "cuda-emu"). -O1, not the extension's -O2: this build is the test vehicle, and -O1
// compiles it in ~10 s instead of ~15 s while the tests it runs take as long (the emulator's
// fiber switches and Python dominate them). The pragma is this file's: the binding keeps -O2.
#pragma GCC optimize("O1")
#include "launch.h"
