"""The fused SE modules are drop-ins: same state_dict as torchvision/timm, same outputs and
gradients, on every kernel backend."""
import copy
import sys
from unittest import mock

import pytest
import timm.layers
import torch
import torchvision
from torch import nn

import attnkernels as ak
from conftest import DEVICE
from utils import assert_load_and_run_without_attnkernels, assert_same_under_checkpointing, onnx_export_and_run


def _pair(real, ours, seed=0):
    torch.manual_seed(seed)
    for p in real.parameters():
        nn.init.normal_(p, std=0.3)
    ours.load_state_dict(real.state_dict(), strict=True)
    real.load_state_dict(ours.state_dict(), strict=True)
    return real.to(DEVICE), ours.to(DEVICE)


def _check(real, ours, backend, shape, channels_last=False, dtype=torch.float32, tol=1e-5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).to(DEVICE, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    se_module = sys.modules["attnkernels.se"]
    with ak.backend(backend), mock.patch.object(se_module, "se", wraps=se_module.se) as fused_op:
        ya = ours(xa)
    # the fused op ran exactly when the module says it fuses (else the eager fallback)
    assert fused_op.call_count == (ours.fused_options() is not None)
    yb = real(xb)
    torch.testing.assert_close(ya, yb, rtol=tol, atol=tol)
    dy = torch.randn(ya.shape, generator=g).to(DEVICE, dtype)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=tol, atol=tol)
    for (name, pa), pb in zip(ours.named_parameters(), real.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("act,gate", [(nn.ReLU, nn.Sigmoid), (nn.SiLU, nn.Sigmoid), (nn.ReLU, nn.Hardsigmoid),
                                      (nn.Hardswish, nn.Hardsigmoid), (nn.GELU, nn.Sigmoid)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_squeeze_excitation_matches_torchvision(kernel_backend, act, gate, channels_last):
    real = torchvision.ops.SqueezeExcitation(24, 6, activation=act, scale_activation=gate)
    ours = ak.SqueezeExcitation(24, 6, activation=act, scale_activation=gate)
    real, ours = _pair(real, ours)
    assert [k for k in ours.state_dict()] == [k for k in real.state_dict()]
    _check(real, ours, kernel_backend, (2, 24, 5, 7), channels_last)
    torch.testing.assert_close(ours._scale(torch.ones(1, 24, 2, 2, device=DEVICE)),
                               real._scale(torch.ones(1, 24, 2, 2, device=DEVICE)))


@pytest.mark.parametrize("kw", [dict(), dict(add_maxpool=True), dict(bias=False, rd_ratio=0.25),
                                dict(act_layer=nn.SiLU, gate_layer="hard_sigmoid", rd_divisor=1)], ids=str)
def test_se_module_matches_timm(kernel_backend, kw):
    real, ours = _pair(timm.layers.SEModule(40, **kw), ak.SEModule(40, **kw))
    assert ours.fc1.out_channels == real.fc1.out_channels
    _check(real, ours, kernel_backend, (3, 40, 6, 6), channels_last=True)


@pytest.mark.parametrize("kw", [dict(), dict(act_layer=nn.SiLU), dict(rd_ratio=0.0625, act_layer=nn.Hardswish),
                                dict(gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_channels=7),
                                dict(act_layer=timm.layers.activations.Swish, gate_layer=timm.layers.activations.HardSigmoid)],
                         ids=["relu", "silu", "hardswish", "mobilenetv3", "timm_classes"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_squeeze_excite_matches_timm_efficientnet_block(kernel_backend, kw, channels_last):
    """timm.models._efficientnet_blocks.SqueezeExcite (EfficientNet / MobileNetV3 blocks): the
    fused drop-in has its keys and computes its outputs and gradients (C=36 is not a multiple of
    the reduced width in every case)."""
    from timm.models._efficientnet_blocks import SqueezeExcite as TimmSqueezeExcite
    real, ours = _pair(TimmSqueezeExcite(36, **kw), ak.SqueezeExcite(36, **kw))
    assert list(ours.state_dict()) == list(real.state_dict())
    assert ours.conv_reduce.out_channels == real.conv_reduce.out_channels
    assert ours.fused_options() is not None
    _check(real, ours, kernel_backend, (3, 36, 5, 6), channels_last)


@pytest.mark.parametrize("kw", [dict(), dict(add_maxpool=True), dict(gate_layer="sigmoid")], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_effective_se_module_matches_timm(kernel_backend, kw, channels_last):
    """timm.layers.EffectiveSEModule (ESE: one C -> C conv, no activation): the drop-in runs the
    fused op's single-layer form, with timm's keys, outputs and gradients."""
    real, ours = _pair(timm.layers.EffectiveSEModule(20, **kw), ak.EffectiveSEModule(20, **kw))
    assert list(ours.state_dict()) == list(real.state_dict()) == ["fc.weight", "fc.bias"]
    assert ours.fused_options() == ("identity", "sigmoid" if kw.get("gate_layer") else "hardsigmoid",
                                    "avgmax" if kw.get("add_maxpool") else "avg")
    _check(real, ours, kernel_backend, (3, 20, 5, 6), channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_senet_se_module_matches_timm_legacy_senet(kernel_backend, channels_last):
    """timm.models.senet.SEModule (the legacy SENets' block): keys, outputs and gradients."""
    senet = pytest.importorskip("timm.models.senet")
    real, ours = _pair(senet.SEModule(32, 8), ak.SENetSEModule(32, 8))
    assert list(ours.state_dict()) == list(real.state_dict())
    assert ours.fused_options() == ("relu", "sigmoid", "avg")
    _check(real, ours, kernel_backend, (3, 32, 5, 6), channels_last)


def test_unfusable_configuration_falls_back_to_eager(kernel_backend):
    real, ours = _pair(torchvision.ops.SqueezeExcitation(8, 2, activation=nn.Tanh),
                       ak.SqueezeExcitation(8, 2, activation=nn.Tanh))
    _check(real, ours, kernel_backend, (2, 8, 3, 3))
    real, ours = _pair(timm.layers.SEModule(16, norm_layer=nn.BatchNorm2d).eval(),
                       ak.SEModule(16, norm_layer=nn.BatchNorm2d).eval())
    _check(real, ours, kernel_backend, (2, 16, 3, 3))
    from timm.models._efficientnet_blocks import SqueezeExcite as TimmSqueezeExcite
    real, ours = _pair(TimmSqueezeExcite(16, act_layer=nn.Tanh), ak.SqueezeExcite(16, act_layer=nn.Tanh))
    assert ours.fused_options() is None
    _check(real, ours, kernel_backend, (2, 16, 3, 3))
    real, ours = _pair(timm.layers.EffectiveSEModule(16, gate_layer="tanh"),
                       ak.EffectiveSEModule(16, gate_layer="tanh"))
    assert ours.fused_options() is None
    _check(real, ours, kernel_backend, (2, 16, 3, 3))
    real, ours = _pair(timm.layers.EffectiveSEModule(16), ak.EffectiveSEModule(16))
    ours.fc.register_forward_pre_hook(lambda *_: None)  # hooks on fc: eager, so they run
    assert ours.fused_options() is None
    _check(real, ours, kernel_backend, (2, 16, 3, 3))


def test_hooked_convs_run_eagerly(kernel_backend):
    """Pruning recomputes fc1.weight in a forward pre-hook; the fused op reads the weights without
    calling the convs, so a module whose convs carry hooks runs eagerly (no stale weight, and the
    hooks run)."""
    import torch.nn.utils.prune as prune
    real, ours = _pair(torchvision.ops.SqueezeExcitation(8, 2), ak.SqueezeExcitation(8, 2))
    for m in (real, ours):
        prune.l1_unstructured(m.fc1, "weight", amount=0.5)
        with torch.no_grad():  # a training step: the weight the next forward's hook computes changes
            m.fc1.weight_orig.mul_(-1.5)
    assert ours.fused_options() is None
    _check(real, ours, kernel_backend, (2, 8, 3, 3))
    # a parametrized weight (a property, no hook) stays fused, through the parametrization
    import torch.nn.utils.parametrize as parametrize

    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    real, ours = _pair(torchvision.ops.SqueezeExcitation(8, 2), ak.SqueezeExcitation(8, 2))
    for m in (real, ours):
        parametrize.register_parametrization(m.fc2, "weight", Doubled())
    assert ours.fused_options() is not None
    _check(real, ours, kernel_backend, (2, 8, 3, 3))
    calls = []
    timm_real, timm_ours = _pair(timm.layers.SEModule(16), ak.SEModule(16))
    timm_ours.fc2.register_forward_hook(lambda *_: calls.append(1))
    _check(timm_real, timm_ours, kernel_backend, (2, 16, 3, 3))
    assert calls == [1]


def test_module_with_fp32_weights_takes_bf16_input(kernel_backend):
    """As under autocast: fp32 parameters, bf16 activations -> weights cast to the input dtype."""
    ours = ak.SqueezeExcitation(16, 4).to(DEVICE)
    x = torch.randn(2, 16, 4, 4, device=DEVICE, dtype=torch.bfloat16)
    with ak.backend(kernel_backend):
        y = ours(x)
    assert y.dtype == torch.bfloat16
    ref = torchvision.ops.SqueezeExcitation(16, 4).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(y.float(), ref(x.float()), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_module_under_autocast(kernel_backend, x_dtype):
    """A mixed-precision training step: under torch.autocast the eager block runs its 1x1 convs
    in bf16; the fused one keeps x's dtype (its fp32 accumulation is the more exact), gives the
    output and gradients the dtypes eager gives, and matches eager within bf16 rounding."""
    real, ours = _pair(torchvision.ops.SqueezeExcitation(24, 6), ak.SqueezeExcitation(24, 6))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 24, 5, 5, generator=g).to(DEVICE, x_dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16), ak.backend(kernel_backend):
        ya, yb = ours(xa), real(xb)
    assert ya.dtype == yb.dtype and ya.shape == yb.shape
    torch.testing.assert_close(ya.float(), yb.float(), rtol=3e-2, atol=3e-2)
    dy = torch.randn(ya.shape, generator=g).to(DEVICE, ya.dtype)
    ya.backward(dy)
    yb.backward(dy)
    assert xa.grad.dtype == xb.grad.dtype
    torch.testing.assert_close(xa.grad.float(), xb.grad.float(), rtol=3e-2, atol=3e-2)
    for (name, pa), pb in zip(ours.named_parameters(), real.parameters()):
        assert pa.grad.dtype == pb.grad.dtype == torch.float32, name
        torch.testing.assert_close(pa.grad, pb.grad, rtol=5e-2, atol=5e-2, msg=name)


def _hardsigmoid_block_twin(m, x):
    """The drop-ins' math with the hardsigmoid gate written as a clamp, which torch can
    differentiate twice (nn.Hardsigmoid cannot: the eager blocks have no double backward)."""
    F = nn.functional
    q = x.mean((2, 3), keepdim=True)
    if isinstance(m, ak.EffectiveSEModule):
        z = F.conv2d(q, m.fc.weight, m.fc.bias)
    else:
        z = F.conv2d(F.relu(F.conv2d(q, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    return x * (z / 6 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("make", [lambda: ak.SqueezeExcitation(16, 4, scale_activation=nn.Hardsigmoid),
                                  lambda: ak.EffectiveSEModule(16)], ids=["torchvision_hardsigmoid", "effective_se"])
def test_module_gradient_penalty(kernel_backend, make):
    """An R1-style penalty (|d out / d x|^2, differentiated to the parameters) through the fused
    drop-in, which the eager blocks cannot do (nn.Hardsigmoid has no double backward), against
    an eager twin of the block that torch can differentiate twice."""
    torch.manual_seed(0)
    m = make().to(DEVICE, torch.float64)
    for prm in m.parameters():
        nn.init.normal_(prm, std=0.3)
    x = torch.randn(2, 16, 4, 3, device=DEVICE, dtype=torch.float64)

    def penalty_grads(forward):
        xl = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(forward(xl).square().sum(), xl, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), list(m.parameters()))

    with ak.backend(kernel_backend):
        got = penalty_grads(m)
    assert m.fused_options() is not None
    want = penalty_grads(lambda t: _hardsigmoid_block_twin(m, t))
    # rtol 1e-6, not fp64's 1e-12: the twin's clamp has the slope 1/6, the drop-in torch's
    # hardsigmoid slope (the float 1.0f / 6.0f even in float64, which the kernels match)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_module_compile_fullgraph(kernel_backend):
    torch._dynamo.reset()
    real, ours = _pair(timm.layers.SEModule(16, add_maxpool=True), ak.SEModule(16, add_maxpool=True))
    x = torch.randn(2, 16, 5, 5, device=DEVICE, requires_grad=True)
    with ak.backend(kernel_backend):
        y = torch.compile(ours, fullgraph=True)(x)
    torch.testing.assert_close(y, real(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and ours.fc1.weight.grad is not None


@pytest.mark.parametrize("make", [lambda: ak.SEModule(16, add_maxpool=True), lambda: ak.EffectiveSEModule(16)],
                         ids=["se_module", "effective_se"])
def test_module_torch_export(kernel_backend, make):
    """torch.export (for deployment): the exported graph holds the fused custom op, not the eager
    fallback, and with a dynamic batch dimension the program matches the module at new sizes."""
    torch.manual_seed(0)
    m = make().to(DEVICE)
    x = torch.randn(2, 16, 5, 5, device=DEVICE)
    batch = torch.export.Dim("batch", min=1, max=64)
    with ak.backend(kernel_backend):
        ep = torch.export.export(m, (x,), dynamic_shapes={"x": {0: batch}})
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert "attnkernels.se_forward.default" in targets, targets
        for n in (1, 5):
            xn = torch.randn(n, 16, 5, 5, device=DEVICE)
            torch.testing.assert_close(ep.module()(xn), m(xn), rtol=1e-5, atol=1e-5)


DROP_INS = {  # one of each drop-in, in a configuration the fused op runs
    "torchvision_se": lambda: ak.SqueezeExcitation(16, 4, activation=nn.SiLU),
    "timm_se_module": lambda: ak.SEModule(16, add_maxpool=True),
    "timm_squeeze_excite": lambda: ak.SqueezeExcite(16),
    "timm_effective_se": lambda: ak.EffectiveSEModule(16),
    "timm_legacy_senet": lambda: ak.SENetSEModule(16, 4),
}


@pytest.mark.filterwarnings("ignore:.*torch.jit")
@pytest.mark.parametrize("name", list(DROP_INS))
def test_module_torch_jit_trace(kernel_backend, name):
    """torch.jit.trace (also torch.onnx.export's tracer) records aten ops only: a kernel call
    would be traced as a constant or as the empty tensor it fills. Under tracing the drop-ins
    run the reference's ops, so the trace computes the block for new inputs."""
    torch.manual_seed(0)
    m = DROP_INS[name]().to(DEVICE).eval()
    assert m.fused_options() is not None
    x = torch.randn(2, 16, 5, 5, device=DEVICE)
    with ak.backend(kernel_backend), torch.no_grad():
        traced = torch.jit.trace(m, x)
        for shape in ((2, 16, 5, 5), (3, 16, 7, 6)):
            xn = torch.randn(shape, device=DEVICE)
            torch.testing.assert_close(traced(xn), m(xn), rtol=1e-5, atol=1e-5)
    assert "aten::mean" in str(traced.graph)


@pytest.mark.filterwarnings("ignore:.*torch.jit")
@pytest.mark.parametrize("name", list(DROP_INS))
def test_module_torch_jit_script(kernel_backend, name):
    """torch.jit.script compiles the eager block (the fused path is torch.jit.unused), so a
    scripted model still scripts after convert; the module itself keeps running fused."""
    torch.manual_seed(0)
    m = DROP_INS[name]().to(DEVICE).eval()
    scripted = torch.jit.script(m)
    x = torch.randn(3, 16, 4, 5, device=DEVICE)
    with ak.backend(kernel_backend), torch.no_grad():
        torch.testing.assert_close(scripted(x), m(x), rtol=1e-5, atol=1e-5)
    assert m.fused_options() is not None


@pytest.mark.filterwarnings("ignore:.*torch.jit")
def test_converted_torchvision_model_scripts_and_traces(kernel_backend):
    """torchvision models are scriptable; after convert they still are, and trace."""
    model = torchvision.models.mobilenet_v3_small(num_classes=10).to(DEVICE).eval()
    n = sum(isinstance(mod, torchvision.ops.SqueezeExcitation) for mod in model.modules())
    ak.convert(model)
    assert sum(isinstance(mod, ak.SqueezeExcitation) for mod in model.modules()) == n > 0
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    with ak.backend(kernel_backend), torch.no_grad():
        want = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), want, rtol=1e-4, atol=1e-4)
        traced = torch.jit.trace(model, torch.randn(2, 3, 64, 64, device=DEVICE))
        torch.testing.assert_close(traced(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_module_under_activation_checkpointing(kernel_backend, use_reentrant):
    """Both checkpoint kinds give eager's gradients (utils.assert_same_under_checkpointing)."""
    real, ours = _pair(torchvision.ops.SqueezeExcitation(16, 4), ak.SqueezeExcitation(16, 4))
    assert_same_under_checkpointing(real, ours, kernel_backend, torch.randn(2, 16, 6, 5, device=DEVICE),
                                    use_reentrant)


def test_module_export_for_onnx_runs_aten_ops(kernel_backend, monkeypatch):
    """Under torch.onnx.export (its default exporter is torch.export-based, and it has no ONNX
    function for the custom op) the drop-ins give the exporter aten ops; a plain torch.export
    keeps the fused op (test_module_torch_export). The exporter's flag is simulated here; the
    real export is test_module_onnx_export."""
    m = DROP_INS["timm_se_module"]().to(DEVICE).eval()
    x = torch.randn(2, 16, 5, 5, device=DEVICE)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    with ak.backend(kernel_backend):
        ep = torch.export.export(m, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("attnkernels" in t for t in targets) and "aten.mean.dim" in targets, targets
    torch.testing.assert_close(ep.module()(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("dynamo", [True, False], ids=["export", "tracer"])
def test_module_onnx_export(kernel_backend, dynamo, tmp_path):
    """torch.onnx.export of a drop-in, with either exporter (needs onnx and onnxruntime, and
    onnxscript for the default one: dev requirements, not dependencies of the package, so this
    skips without them), with a kernel backend in force: the file holds the block's ONNX ops,
    and onnxruntime computes the module's outputs from it, at the export's batch and another."""
    m = DROP_INS["timm_se_module"]().to(DEVICE).eval()
    g = torch.Generator().manual_seed(0)
    x, x3 = (torch.randn(shape, generator=g).to(DEVICE) for shape in ((2, 16, 5, 5), (3, 16, 5, 5)))
    with ak.backend(kernel_backend):
        ops = {op for _, op in onnx_export_and_run(m, x, tmp_path / "se.onnx", dynamo, others=(x3,))}
    assert {"ReduceMean", "ReduceMax", "Sigmoid", "Mul"} <= ops, ops


@pytest.mark.filterwarnings("ignore")
def test_converted_model_onnx_runs_in_onnxruntime(tmp_path):
    """A converted torchvision mobilenet_v3_small (nine fused SE blocks) exports and runs in
    onnxruntime with the unconverted model's logits. (The TorchScript-based exporter: the
    torch.export-based one, run on a drop-in by test_module_onnx_export, takes ~30 s of CPU on a
    whole model.)"""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    with torch.no_grad():  # BN statistics of a random batch: O(1) activations, live SE gates
        for bn in (mod for mod in model.modules() if isinstance(mod, nn.BatchNorm2d)):
            bn.momentum = None
        model.train()(torch.randn(4, 3, 64, 64))
    model = model.to(DEVICE).eval()
    orig = copy.deepcopy(model)
    ak.convert(model)
    assert sum(isinstance(mod, ak.SqueezeExcitation) for mod in model.modules()) == 9
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    onnx_export_and_run(model, x, tmp_path / "mbv3.onnx", dynamo=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), orig(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*torch.jit")
def test_saved_script_and_trace_load_without_attnkernels(tmp_path):
    """A scripted or traced drop-in, saved with torch.jit.save, loads and runs in a process that
    never imports attnkernels (deployment without the package), with the module's output."""
    torch.manual_seed(0)
    m = ak.SEModule(16, add_maxpool=True).eval()
    x = torch.randn(2, 16, 4, 5)
    y = m(x).detach()
    assert_load_and_run_without_attnkernels(tmp_path, {
        "scripted": (torch.jit.script(m), (x,), y),
        "traced": (torch.jit.trace(m, torch.randn(2, 16, 3, 3)), (x,), y)})


@pytest.mark.parametrize("name", list(DROP_INS))
def test_module_fx_symbolic_trace(kernel_backend, name):
    """torch.fx.symbolic_trace: the fused call is a leaf of the traced graph (one call_function
    node reading the module's parameters through get_attr), and the GraphModule runs it fused,
    with the module's output and gradients."""
    torch.manual_seed(0)
    m = DROP_INS[name]().to(DEVICE)
    gm = torch.fx.symbolic_trace(m)
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert [n.target.__name__ for n in calls] == ["_fused_se_call"], gm.code
    assert {n.target for n in gm.graph.nodes if n.op == "get_attr"} == set(dict(m.named_parameters()))
    x = torch.randn(2, 16, 4, 5, device=DEVICE)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    se_module = sys.modules["attnkernels.se"]
    with ak.backend(kernel_backend), mock.patch.object(se_module, "se", wraps=se_module.se) as fused_op:
        ya = gm(xa)
    assert fused_op.call_count == 1
    yb = m._eager_forward(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    (ga,) = torch.autograd.grad(ya.square().sum(), xa)
    (gb,) = torch.autograd.grad(yb.square().sum(), xb)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)


def test_fx_trace_of_an_unfusable_block_is_the_eager_one():
    m = ak.SqueezeExcitation(8, 2, activation=nn.Tanh).to(DEVICE)
    assert m.fused_options() is None
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(2, 8, 3, 3, device=DEVICE)
    torch.testing.assert_close(gm(x), m(x))


def test_converted_torchvision_feature_extractor(kernel_backend):
    """torchvision's create_feature_extractor (FX; detection and segmentation backbones use it)
    on a converted model: it traces, and the extractor runs the fused blocks."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = torchvision.models.mobilenet_v3_small(num_classes=10).to(DEVICE).eval()
    ak.convert(model)
    extractor = create_feature_extractor(model, return_nodes={"features.4": "c4", "features.9": "c9"})
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    se_module = sys.modules["attnkernels.se"]
    with ak.backend(kernel_backend), torch.no_grad(), \
            mock.patch.object(se_module, "se", wraps=se_module.se) as fused_op:
        feats = extractor(x)
        n_fused = fused_op.call_count
        want = {"c4": model.features[:5](x), "c9": model.features[:10](x)}
    assert n_fused == sum(isinstance(m, ak.SqueezeExcitation) for m in model.features[:10].modules()) > 0
    for k in want:
        torch.testing.assert_close(feats[k], want[k], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_module_make_graphed_callables(kernel_backend, channels_last):
    """torch.cuda.make_graphed_callables on a drop-in: its forward and backward captured once
    (the host time per call gone, what batch-1 training wants), then replayed on fresh inputs;
    outputs and gradients (x's and the parameters', set to None before each step, as a training
    loop's zero_grad does) match torchvision's eager block."""
    real, ours = _pair(torchvision.ops.SqueezeExcitation(32, 8), ak.SqueezeExcitation(32, 8))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(3)

    def sample():
        return [torch.randn(4, 32, 7, 7, generator=g).to(DEVICE).contiguous(memory_format=fmt) for _ in range(2)]

    with ak.backend(kernel_backend):
        graphed = torch.cuda.make_graphed_callables(ours, (sample()[0].requires_grad_(),))
        for _ in range(3):
            x, dy = sample()
            ours.zero_grad(set_to_none=True)
            real.zero_grad(set_to_none=True)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya = graphed(xa)
            ya.backward(dy)
            yb = real(xb)
            yb.backward(dy)
            torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
            for (name, pa), pb in zip(ours.named_parameters(), real.parameters()):
                torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-5, msg=name)
