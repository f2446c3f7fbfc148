// nvcc translation unit of the CBAM kernels (namespace ak::cbam::cuda, backend "cuda").
#include "launch.h"
