"""Triton backend: one module per op (se.py, sca.py, ...), shared jit helpers in _common.py.

Under TRITON_INTERPRET=1 (set before this package is imported) the kernels run on CPU tensors.
"""
from .bam import bam_backward, bam_forward  # noqa: F401
from .cbam import cbam_backward, cbam_forward  # noqa: F401
from .se import se_backward, se_forward, se_inference  # noqa: F401
from .sca import sca_backward, sca_forward  # noqa: F401


def unavailable_reason(name: str):
    return None
