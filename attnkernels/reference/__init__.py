"""Eager PyTorch references of the four attention modules: the spec every fused kernel is tested
against (exact math in shared/docs/modules.md)."""
from ._common import ACTIVATIONS, GATES, act_name, gate_name, make_divisible
from .se import (EffectiveSEModule, SEModule, SENetSEModule, SqueezeExcitation, SqueezeExcite, se, se_pool,
                 se_scale)
from .cbam import (CBAM, CbamModule, LightCbamModule, cbam, cbam_channel, cbam_channel_logits,
                   cbam_pool, cbam_spatial, cbam_spatial_logits, cbam_spatial_pool)
from .bam import BAM, bam_attention, bam_channel, bam_gate, bam_spatial
from .sca import (SCA, sca, sca_channel_attention, sca_channel_logits, sca_spatial_attention,
                  sca_spatial_logits)
