// nvcc translation unit of the SE kernels (attnkernels._C).
#define AK_SE_NS cuda
#include "launch.h"
