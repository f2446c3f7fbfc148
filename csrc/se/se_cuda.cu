// nvcc translation unit of the SE kernels (namespace ak::se::cuda, backend "cuda").
#include "launch.h"
