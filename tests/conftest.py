"""Test set-up: without a GPU, Triton kernels run under the interpreter on CPU tensors (the
variable must be set before attnkernels.triton is imported)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# fp32 references must be fp32: cuDNN convolutions (the 1x1 convs of torchvision/timm SE blocks)
# default to TF32 on GPUs, ~1e-4 relative error, which the parity tests' 1e-5 would flag.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

import pytest  # noqa: E402

import attnkernels  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_BACKENDS = [b for b in attnkernels.available_backends(DEVICE) if b != "reference"]


def pytest_report_header(config):
    return f"attnkernels: device={DEVICE}, kernel backends={KERNEL_BACKENDS}"


@pytest.fixture(params=KERNEL_BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no kernel backend"))])
def kernel_backend(request):
    return request.param


@pytest.fixture
def device():
    return DEVICE
