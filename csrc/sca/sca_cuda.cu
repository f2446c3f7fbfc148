// nvcc translation unit of the SCA kernels (namespace ak::sca::cuda, backend "cuda").
#include "launch.h"
