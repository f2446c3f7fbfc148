// nvcc translation unit of the BAM kernels (namespace ak::bam::cuda, backend "cuda").
#include "launch.h"
