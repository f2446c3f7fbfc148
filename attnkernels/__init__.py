"""attnkernels: fused CUDA and Triton kernels for the attention blocks of CNNs."""
from .backend import available_backends, backend, get_backend, set_backend
from . import reference
from .bam import BAM, bam
from .cbam import CBAM, CbamModule, LightCbamModule, cbam
from .se import EffectiveSEModule, SEModule, SENetSEModule, SqueezeExcitation, SqueezeExcite, se
from .sca import SCA, sca
from .convert import convert, convert_report
from ._variant import force_variant

__all__ = [
    "available_backends", "backend", "get_backend", "set_backend", "force_variant",
    "reference", "se", "SqueezeExcitation", "SEModule", "SqueezeExcite", "EffectiveSEModule", "SENetSEModule",
    "BAM", "bam",
    "sca", "SCA",
    "cbam", "CBAM", "CbamModule", "LightCbamModule",
    "convert",
    "convert_report",
]
__version__ = "0.1.0"
