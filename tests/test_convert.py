"""attnkernels.convert: swaps torchvision SqueezeExcitation / timm SEModule for the fused
drop-ins, keeping state_dict, parameters (the same objects), dtype, device, requires_grad and
train/eval flags; converted models compute what the originals compute, on every backend."""
import copy

import pytest
import torch
from torch import nn

import attnkernels as ak
from attnkernels.convert import convert_report
from conftest import DEVICE

torchvision = pytest.importorskip("torchvision")
from torchvision.ops.misc import SqueezeExcitation as TVSE  # noqa: E402

try:
    import timm
    from timm.layers.squeeze_excite import SEModule as TimmSE
except Exception:  # timm is optional for attnkernels
    timm = TimmSE = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm not installed")


def _calibrate(model, shape=(2, 3, 64, 64)):
    """Random-init nets in eval mode shrink activations to ~1e-10 (BN running stats at their
    defaults), which would make any output comparison vacuous: recompute the BN statistics on
    one random batch so activations (and SE gates) are O(1)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: the batch's statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(shape))
    return model.eval()


def _pair(make):
    """Two identical models (same weights) in eval mode: (to convert, untouched original)."""
    torch.manual_seed(0)
    a = _calibrate(make()).eval()
    b = copy.deepcopy(a)
    return a, b


def _count(model, cls):
    return sum(type(m) is cls for m in model.modules())


def _check_same_output(conv, orig, x, backend=None, rtol=1e-4, atol=1e-5):
    """Outputs equal up to rtol and atol relative to the output's largest magnitude."""
    with torch.no_grad():
        want = orig(x)
        if backend is None:
            got = conv(x)
        else:
            with ak.backend(backend):
                got = conv(x)
    scale = want.abs().max().item()
    assert 1e-3 < scale < 1e4, f"degenerate output scale {scale:.3g}: the check would be vacuous"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale)


def test_mobilenet_v3_small_swapped_and_equal():
    model, orig = _pair(lambda: torchvision.models.mobilenet_v3_small(weights=None))
    n_se = _count(model, TVSE)
    assert n_se == 9
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    out = ak.convert(model)
    assert out is model
    assert _count(model, TVSE) == 0
    assert _count(model, ak.SqueezeExcitation) == n_se
    assert list(model.state_dict()) == keys
    # the very same Parameter objects: an optimizer made before convert() keeps working
    assert all(params[n] is p for n, p in model.named_parameters())
    rep = convert_report(model)
    assert rep["fused"] == n_se and rep["eager_fallback"] == 0
    assert rep["swapped"] == {"torchvision.ops.misc.SqueezeExcitation": n_se}
    assert rep["by_config"] == {"relu/hardsigmoid/avg": n_se}
    assert not any(m.training for m in model.modules())
    _check_same_output(model, orig, torch.randn(2, 3, 64, 64))  # default backend on CPU


def test_efficientnet_b0_silu_sigmoid():
    model, orig = _pair(lambda: torchvision.models.efficientnet_b0(weights=None))
    n_se = _count(model, TVSE)
    ak.convert(model)
    assert n_se == 16 and _count(model, ak.SqueezeExcitation) == n_se
    assert convert_report(model)["by_config"] == {"silu/sigmoid/avg": n_se}
    _check_same_output(model, orig, torch.randn(1, 3, 64, 64))


@needs_timm
def test_timm_seresnet18():
    try:
        model, orig = _pair(lambda: timm.create_model("seresnet18", pretrained=False))
    except Exception as e:  # pragma: no cover - offline registry problems
        pytest.skip(f"timm.create_model failed: {e}")
    n_se = _count(model, TimmSE)
    assert n_se == 8
    keys = list(model.state_dict())
    ak.convert(model)
    assert _count(model, TimmSE) == 0 and _count(model, ak.SEModule) == n_se
    assert list(model.state_dict()) == keys
    _check_same_output(model, orig, torch.randn(1, 3, 64, 64))


@needs_timm
@pytest.mark.parametrize("name,n_se,config", [
    ("efficientnet_b0", 16, {"silu/sigmoid/avg": 16}),
    ("mobilenetv3_large_100", 8, {"relu/hardsigmoid/avg": 8}),
])
def test_timm_efficientnet_family(name, n_se, config):
    """timm's EfficientNet / MobileNetV3 SE is its own class (_efficientnet_blocks.SqueezeExcite):
    swapped, same keys and Parameters, fused with the block's activation, same output."""
    from timm.models._efficientnet_blocks import SqueezeExcite as TimmSqueezeExcite
    model, orig = _pair(lambda: timm.create_model(name, pretrained=False))
    assert _count(model, TimmSqueezeExcite) == n_se
    keys, params = list(model.state_dict()), dict(model.named_parameters())
    ak.convert(model)
    assert _count(model, TimmSqueezeExcite) == 0 and _count(model, ak.SqueezeExcite) == n_se
    assert list(model.state_dict()) == keys
    assert all(params[n] is p for n, p in model.named_parameters())
    rep = convert_report(model)
    assert rep["by_config"] == config and rep["eager_fallback"] == 0
    assert rep["swapped"] == {"timm.models._efficientnet_blocks.SqueezeExcite": n_se}
    _check_same_output(model, orig, torch.randn(1, 3, 64, 64))


@needs_timm
def test_timm_vovnet_effective_se():
    """timm's VoVNet SE is timm.layers.EffectiveSEModule (ESE): swapped for the drop-in, which
    runs the fused op's single-layer form; same keys, Parameters and output."""
    model, orig = _pair(lambda: timm.create_model("ese_vovnet19b_dw", pretrained=False))
    n_se = _count(model, timm.layers.EffectiveSEModule)
    assert n_se == 4
    keys, params = list(model.state_dict()), dict(model.named_parameters())
    ak.convert(model)
    assert _count(model, timm.layers.EffectiveSEModule) == 0 and _count(model, ak.EffectiveSEModule) == n_se
    assert list(model.state_dict()) == keys
    assert all(params[n] is p for n, p in model.named_parameters())
    rep = convert_report(model)
    assert rep["by_config"] == {"identity/hardsigmoid/avg": n_se} and rep["eager_fallback"] == 0
    assert rep["swapped"] == {"timm.layers.squeeze_excite.EffectiveSEModule": n_se}
    _check_same_output(model, orig, torch.randn(1, 3, 64, 64))


def _timm_variants():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        TimmSE(32),                                                   # relu / sigmoid / avg
        TimmSE(32, rd_channels=5, add_maxpool=True, act_layer=nn.SiLU, gate_layer="hard_sigmoid"),
        TimmSE(32, rd_ratio=0.25, bias=False, act_layer=nn.GELU),
        TimmSE(32, norm_layer=nn.BatchNorm2d),                        # norm: eager fallback
        TimmSE(32, act_layer=nn.Tanh),                                # unsupported act: fallback
    )


@needs_timm
def test_timm_semodule_variants():
    model, orig = _pair(_timm_variants)
    ak.convert(model)
    assert _count(model, TimmSE) == 0 and _count(model, ak.SEModule) == 5
    se = list(model)[1:]
    assert se[1].add_maxpool and se[1].fc1.out_channels == 5
    assert se[2].fc1.bias is None and se[2].fc2.bias is None
    assert isinstance(se[3].bn, nn.BatchNorm2d)
    assert se[1].act is not None and se[1].gate is not None
    rep = convert_report(model)
    assert rep["fused"] == 3 and rep["eager_fallback"] == 2
    assert rep["by_config"] == {"relu/sigmoid/avg": 1, "silu/hardsigmoid/avgmax": 1,
                                "gelu/sigmoid/avg": 1}
    assert list(model.state_dict()) == list(orig.state_dict())
    _check_same_output(model, orig, torch.randn(2, 3, 9, 11))


def test_reuses_activation_instances_and_keeps_flags():
    se = TVSE(24, 8, activation=nn.SiLU, scale_activation=nn.Hardsigmoid)
    model = nn.Sequential(nn.Identity(), se).to(torch.float64)
    model.train()
    se.fc1.weight.requires_grad_(False)
    se.scale_activation.eval()  # an odd per-submodule flag survives too
    act, gate = se.activation, se.scale_activation
    ak.convert(model)
    new = model[1]
    assert type(new) is ak.SqueezeExcitation
    assert new.activation is act and new.scale_activation is gate
    assert new.training and not new.scale_activation.training
    assert new.fc1.weight.dtype == torch.float64 and new.fc2.bias.dtype == torch.float64
    assert not new.fc1.weight.requires_grad and new.fc2.weight.requires_grad


def test_root_module_and_not_inplace():
    se = TVSE(16, 4)
    new = ak.convert(se)
    assert type(new) is ak.SqueezeExcitation and type(se) is TVSE
    assert new.fc1.weight is se.fc1.weight

    model = nn.Sequential(TVSE(16, 4))
    copy_ = ak.convert(model, inplace=False)
    assert type(model[0]) is TVSE and type(copy_[0]) is ak.SqueezeExcitation
    assert copy_[0].fc1.weight is not model[0].fc1.weight


def test_nothing_to_convert_and_idempotent():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
    assert ak.convert(model) is model
    assert convert_report(model)["fused"] == 0
    model = nn.Sequential(TVSE(8, 2))
    ak.convert(model)
    ak.convert(model)  # already converted: nothing more to do
    assert type(model[0]) is ak.SqueezeExcitation
    assert convert_report(model)["swapped"] == {"torchvision.ops.misc.SqueezeExcitation": 1}


def test_subclass_is_left_alone():
    class MySE(TVSE):
        def forward(self, x):
            return super().forward(x) + 1

    model = nn.Sequential(MySE(8, 2))
    ak.convert(model)
    assert type(model[0]) is MySE


def test_training_gradients_match():
    """Train-mode fwd+bwd through a converted block gives the original's gradients."""
    torch.manual_seed(0)
    orig = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16),
                         TVSE(16, 4, activation=nn.SiLU)).double()
    model = ak.convert(copy.deepcopy(orig))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    orig(x).square().sum().backward()
    model(x).square().sum().backward()
    for (n, p), q in zip(orig.named_parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=n)


def test_kernel_backend_mobilenet(kernel_backend):
    """The converted model on each kernel backend (CPU: Triton interpreter and cuda-emu; GPU:
    triton and cuda) matches the unconverted model, small input."""
    model, orig = _pair(lambda: torchvision.models.mobilenet_v3_small(weights=None))
    model, orig = model.to(DEVICE), orig.to(DEVICE)
    ak.convert(model)
    assert convert_report(model)["device"] == str(model.features[0][0].weight.device)
    x = torch.randn(1, 3, 64, 64, device=DEVICE)
    # cudnn may use TF32 for the convs of both models; the SE blocks are the only difference
    _check_same_output(model, orig, x, backend=kernel_backend, rtol=1e-3, atol=1e-4)


@needs_timm
def test_kernel_backend_timm_mobilenetv3(kernel_backend):
    """timm's MobileNetV3 (its SE: _efficientnet_blocks.SqueezeExcite, ReLU / hard_sigmoid)
    converted, on each kernel backend, matches the unconverted model."""
    model, orig = _pair(lambda: timm.create_model("mobilenetv3_small_050", pretrained=False))
    model, orig = model.to(DEVICE), orig.to(DEVICE)
    ak.convert(model)
    assert convert_report(model)["fused"] == _count(model, ak.SqueezeExcite) > 0
    x = torch.randn(1, 3, 64, 64, device=DEVICE)
    _check_same_output(model, orig, x, backend=kernel_backend, rtol=1e-3, atol=1e-4)


@needs_timm
def test_kernel_backend_timm_vovnet(kernel_backend):
    """timm's ese_vovnet19b_dw (ESE blocks: the single-layer form) converted, on each kernel
    backend, matches the unconverted model."""
    model, orig = _pair(lambda: timm.create_model("ese_vovnet19b_dw", pretrained=False))
    model, orig = model.to(DEVICE), orig.to(DEVICE)
    ak.convert(model)
    assert convert_report(model)["fused"] == _count(model, ak.EffectiveSEModule) == 4
    x = torch.randn(1, 3, 64, 64, device=DEVICE)
    _check_same_output(model, orig, x, backend=kernel_backend, rtol=1e-3, atol=1e-4)


@needs_timm
def test_kernel_backend_timm_legacy_seresnet(kernel_backend):
    """timm's legacy_seresnet18 (the original SENet's SEModule, timm.models.senet): every block
    swapped, same keys and Parameter objects, and on each kernel backend the same output."""
    from timm.models.senet import SEModule as LegacySE
    model, orig = _pair(lambda: timm.create_model("legacy_seresnet18", pretrained=False))
    params = {n: id(p) for n, p in model.named_parameters()}
    n_se = _count(model, LegacySE)
    assert n_se == 8
    ak.convert(model.to(DEVICE))
    orig = orig.to(DEVICE)
    assert _count(model, LegacySE) == 0 and convert_report(model)["fused"] == _count(model, ak.SENetSEModule) == n_se
    assert {n: id(p) for n, p in model.named_parameters()} == params
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    _check_same_output(model, orig, x, backend=kernel_backend, rtol=1e-3, atol=1e-4)


@needs_timm
def test_kernel_backend_timm_avgmax(kernel_backend):
    model, orig = _pair(_timm_variants)
    model, orig = model.to(DEVICE), orig.to(DEVICE)
    ak.convert(model)
    x = torch.randn(2, 3, 9, 11, device=DEVICE)
    _check_same_output(model, orig, x, backend=kernel_backend, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_and_half_dtype_kept():
    model = nn.Sequential(TVSE(32, 8)).to("cuda", torch.float16)
    ak.convert(model)
    w = model[0].fc1.weight
    assert w.is_cuda and w.dtype == torch.float16
    x = torch.randn(2, 32, 7, 7, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        assert model(x).dtype == torch.float16
