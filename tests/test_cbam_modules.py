"""The fused CBAM modules are drop-ins: timm's CbamModule / LightCbamModule state_dicts load strict
and give the same outputs, gradients and BatchNorm bookkeeping; the official CBAM (a user's copy
of its source) and timm models convert; blocks the kernels cannot run (SyncBatchNorm, hooks, pool
types they lack) run eagerly. Every kernel backend."""
import copy
import sys
from unittest import mock

import pytest
import torch
from torch import nn

import attnkernels as ak
from attnkernels import reference
import official_code
from conftest import DEVICE
from utils import assert_same_state, assert_same_under_checkpointing, randomize_

timm_cbam = pytest.importorskip("timm.layers.cbam")
timm_act = pytest.importorskip("timm.layers.activations")

pytestmark = pytest.mark.filterwarnings("ignore:nn.functional.sigmoid is deprecated")


def official_cbam_module():
    """The official CBAM (MODELS/cbam.py, verbatim) as a user's project holds it: tests/official_code.py."""
    return official_code.load().cbam


def _fused_calls():
    """A mock wrapping attnkernels.cbam.cbam (the functional every fused forward calls)."""
    mod = sys.modules["attnkernels.cbam"]
    return mock.patch.object(mod, "cbam", wraps=mod.cbam)


def _check(real, ours, backend, shape, train, channels_last=False, dtype=torch.float64, tol=1e-10, steps=2,
           run=None, calls=None):
    """`steps` forward/backward steps of both modules (train or eval mode) on the same inputs: equal
    outputs, gradients and state (BatchNorm running statistics and num_batches_tracked); the fused
    op ran exactly when the drop-in says it fuses. run: what runs ours (a traced GraphModule of
    it, which shares its parameters and buffers), else ours. calls: the fused calls a forward of a
    model holding drop-ins makes."""
    real.train(train)
    ours.train(train)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        want_calls = int(ours.fused_options() is not None) if calls is None else calls
        with ak.backend(backend), _fused_calls() as fused:
            ya = (run or ours)(xa)
        assert fused.call_count == want_calls
        yb = real(xb)
        torch.testing.assert_close(ya, yb, rtol=tol, atol=tol)
        dy = torch.randn(ya.shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=tol, atol=tol)
        for (name, pa), pb in zip(ours.named_parameters(), real.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=tol, atol=tol, msg=name)
        assert_same_state(ours, real, rtol=tol, atol=tol)


def _pair(real, ours, seed=0, dtype=torch.float64):
    """Random weights and BatchNorm statistics in `real`, loaded strict into `ours` and back."""
    randomize_(real, torch.Generator().manual_seed(seed))
    ours.load_state_dict(real.state_dict(), strict=True)
    real.load_state_dict(ours.state_dict(), strict=True)
    return real.to(DEVICE, dtype), ours.to(DEVICE, dtype)


TIMM_CASES = [("CbamModule", dict()), ("CbamModule", dict(mlp_bias=True, act_layer=nn.SiLU, spatial_kernel_size=5)),
              ("CbamModule", dict(gate_layer="hard_sigmoid", rd_ratio=0.25, act_layer=nn.Hardswish)),
              ("LightCbamModule", dict()), ("LightCbamModule", dict(act_layer=timm_act.GELU, spatial_kernel_size=3))]  # (timm passes inplace=)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,kw", TIMM_CASES, ids=str)
def test_timm_cbam_modules_match(kernel_backend, name, kw, train):
    """timm's modules and ours: the same state_dict keys (strict loading both ways), outputs,
    gradients and BatchNorm bookkeeping, fused (both layouts)."""
    real, ours = _pair(getattr(timm_cbam, name)(40, **kw), getattr(ak, name)(40, **kw))
    assert list(ours.state_dict()) == list(real.state_dict())
    assert ours.fused_options() is not None
    _check(real, ours, kernel_backend, (3, 40, 6, 5), train, channels_last=len(kw) % 2 == 1)


@pytest.mark.parametrize("pool_types,no_spatial,train", [
    (["avg", "max"], False, True), (["avg", "max"], False, False), (["max"], False, True), (["avg"], True, True),
    (["avg", "lp"], False, True), (["avg", "lse"], True, False)], ids=str)
def test_official_cbam_converted(kernel_backend, pool_types, no_spatial, train):
    """A user's copy of the official CBAM: convert() recognizes it (class name and layout) and swaps
    in attnkernels.CBAM with the same state_dict and Parameters; the result computes the
    original's outputs, gradients and BatchNorm bookkeeping (momentum 0.01), fused unless a pool
    type is one the kernels lack (lp, lse: eager)."""
    official = official_cbam_module()
    real = official.CBAM(32, reduction_ratio=8, pool_types=pool_types, no_spatial=no_spatial)
    randomize_(real, torch.Generator().manual_seed(3))
    real = real.to(DEVICE, torch.float64)
    ours = ak.convert(copy.deepcopy(real))
    assert type(ours) is ak.CBAM and ours._attnkernels_converted == {f"{official.__name__}.CBAM": 1}
    assert list(ours.state_dict()) == list(real.state_dict())
    assert (ours.fused_options() is None) == ("lp" in pool_types or "lse" in pool_types)
    _check(real, ours, kernel_backend, (2, 32, 5, 6), train, channels_last=no_spatial)


def test_official_cbam_inside_a_model_converted_keeping_parameters(kernel_backend):
    official = official_cbam_module()
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), official.CBAM(16, 4), nn.ReLU())
    params = {n: p for n, p in model.named_parameters()}
    ak.convert(model)
    assert type(model[1]) is ak.CBAM
    assert all(p is params[n] for n, p in model.named_parameters())
    assert ak.convert_report(model)["fused"] == 1


@pytest.mark.parametrize("attn,train", [("cbam", True), ("lcbam", False)], ids=["cbam_train", "lcbam_eval"])
def test_converted_timm_resnet_with_cbam(kernel_backend, attn, train):
    """timm's ResNet-18 with CBAM in every block (block_args attn_layer): convert() swaps the 8
    blocks, and the converted model's forward and backward (and, in training mode, every
    BatchNorm's bookkeeping) equal the unconverted one's. 32x32 input: layer4's maps are 1x1,
    smaller than the 7x7 conv's halo."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    real = timm.create_model("resnet18", block_args=dict(attn_layer=attn), num_classes=10).to(DEVICE, torch.float64)
    randomize_(real, torch.Generator().manual_seed(4), scale=0.2)
    ours = ak.convert(copy.deepcopy(real))
    cls = ak.CbamModule if attn == "cbam" else ak.LightCbamModule
    assert sum(type(m) is cls for m in ours.modules()) == 8
    assert ak.convert_report(ours)["fused"] == 8
    _check(real, ours, kernel_backend, (2, 3, 32, 32), train, tol=1e-8, steps=1, calls=8)


@pytest.mark.parametrize("which", ["official", "timm"])
def test_sync_batchnorm_runs_eagerly(kernel_backend, which):
    """A SyncBatchNorm's statistics span processes: convert() keeps the old BatchNorm instance, a
    SyncBatchNorm stays one, and the drop-in runs its eager forward."""
    real = (official_cbam_module().CBAM(16, 4) if which == "official" else timm_cbam.CbamModule(16))
    randomize_(real, torch.Generator().manual_seed(5))
    real = nn.SyncBatchNorm.convert_sync_batchnorm(real).to(DEVICE, torch.float64)
    ours = ak.convert(copy.deepcopy(real))
    bn = ours.SpatialGate.spatial.bn if which == "official" else ours.spatial.conv.bn
    assert type(bn) is nn.SyncBatchNorm and ours.fused_options() is None
    _check(real, ours, kernel_backend, (2, 16, 4, 5), False)


def test_hooks_run_eagerly(kernel_backend):
    """Hooks on a drop-in's submodules (pruning recomputes a weight in a forward pre-hook) would be
    skipped by the fused call: the drop-in runs eagerly, and the hooks run."""
    import torch.nn.utils.prune as prune

    calls = []
    real, ours = _pair(timm_cbam.CbamModule(16), ak.CbamModule(16))
    ours.spatial.conv.bn.register_forward_hook(lambda *_: calls.append(1))
    assert ours.fused_options() is None
    _check(real, ours, kernel_backend, (2, 16, 4, 5), True, steps=1)
    assert calls == [1]
    official = official_cbam_module()
    real = official.CBAM(16, 4).to(DEVICE, torch.float64)
    ours = ak.convert(copy.deepcopy(real))
    for m in (real, ours):
        prune.l1_unstructured(m.SpatialGate.spatial.conv, "weight", amount=0.3)
    assert ours.fused_options() is None
    _check(real, ours, kernel_backend, (2, 16, 4, 5), True, steps=1)
    # hooks on the MLP's convs: eager too (the reference's channel gate reads their weights
    # without calling them, so such a hook does not run there either)
    real, ours = _pair(timm_cbam.LightCbamModule(16), ak.LightCbamModule(16))
    ours.channel.fc1.register_forward_pre_hook(lambda *_: None)
    assert ours.fused_options() is None
    _check(real, ours, kernel_backend, (2, 16, 4, 5), False, steps=1)


def test_unfusable_configurations_run_eagerly(kernel_backend):
    """An activation the kernels lack, gates that differ between the branches (one gate serves
    both in the kernels), a non-sigmoid spatial gate in the Light module (its channel gate is
    always a sigmoid): eager, with the module's results."""
    for real, ours in [(timm_cbam.CbamModule(16, act_layer=timm_act.Tanh), ak.CbamModule(16, act_layer=timm_act.Tanh)),
                       (timm_cbam.CbamModule(16), ak.CbamModule(16)),
                       (timm_cbam.LightCbamModule(16), ak.LightCbamModule(16))]:
        real, ours = _pair(real, ours)
        if isinstance(ours.channel.act, nn.ReLU):
            real.spatial.gate = nn.Hardsigmoid()
            ours.spatial.gate = nn.Hardsigmoid()
        assert ours.fused_options() is None
        _check(real, ours, kernel_backend, (2, 16, 4, 5), True, steps=1)


@pytest.mark.parametrize("name,momentum", [("CBAM", 0.01), ("CBAM", None), ("CbamModule", 0.1),
                                           ("LightCbamModule", None)], ids=str)
def test_train_mode_batchnorm_bookkeeping(kernel_backend, name, momentum):
    """Training steps of the drop-in and of the eager reference module: the same running
    statistics and num_batches_tracked, including momentum None (the cumulative average,
    1 / num_batches_tracked), without tracked statistics (track_running_stats=False: batch
    statistics in both modes), and eval mode with the statistics learned."""
    make = {"CBAM": lambda cls: cls(24, 4), "CbamModule": lambda cls: cls(24, spatial_kernel_size=5),
            "LightCbamModule": lambda cls: cls(24)}[name]
    real, ours = _pair(make(getattr(reference, name)), make(getattr(ak, name)), seed=6)
    for m in (real, ours):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.momentum = momentum
    _check(real, ours, kernel_backend, (3, 24, 5, 4), True, steps=3)
    _check(real, ours, kernel_backend, (3, 24, 5, 4), False, steps=1)
    for m in (real, ours):
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.track_running_stats = False
                bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    _check(real, ours, kernel_backend, (3, 24, 5, 4), True, steps=1)
    _check(real, ours, kernel_backend, (3, 24, 5, 4), False, steps=1)


@pytest.mark.parametrize("name", ["CBAM", "CbamModule"])
def test_module_fx_symbolic_trace(kernel_backend, name):
    """torch.fx.symbolic_trace: the fused call is a leaf of the traced graph (one call_function
    node reading the module's parameters and buffers through get_attr), and the GraphModule runs
    it fused in training mode with the module's outputs and BatchNorm bookkeeping."""
    make = {"CBAM": lambda cls: cls(16, 4), "CbamModule": lambda cls: cls(16)}[name]
    real, ours = _pair(make(getattr(reference, name)), make(getattr(ak, name)), seed=7)
    gm = torch.fx.symbolic_trace(ours.train())
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert [n.target.__name__ for n in calls] == ["_fused_cbam_call"], gm.code
    state = set(dict(ours.named_parameters())) | {k for k, _ in ours.named_buffers()}
    assert {n.target for n in gm.graph.nodes if n.op == "get_attr"} == state
    _check(real, ours, kernel_backend, (2, 16, 4, 5), True, steps=2, run=gm)


def test_module_with_fp32_weights_takes_bf16_input(kernel_backend):
    """As under autocast: fp32 parameters, bf16 activations -> the conv weights cast to the
    input's dtype, the BatchNorm's fp32 statistics updated in place."""
    real, ours = _pair(timm_cbam.CbamModule(16), ak.CbamModule(16), dtype=torch.float32)
    x = torch.randn(2, 16, 5, 4, device=DEVICE, dtype=torch.bfloat16)
    with ak.backend(kernel_backend):
        y = ours.train()(x)
    assert y.dtype == torch.bfloat16
    want = real.train()(x.float())
    torch.testing.assert_close(y.float(), want, rtol=3e-2, atol=3e-2)
    assert_same_state(ours, real, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("name,use_reentrant", [("CBAM", True), ("CbamModule", False), ("LightCbamModule", True)],
                         ids=str)
def test_module_under_activation_checkpointing(kernel_backend, name, use_reentrant):
    """In training mode under torch.utils.checkpoint (the forward, BatchNorm bookkeeping included,
    runs again in the backward): eager's gradients and running statistics."""
    real, ours = _pair(getattr(reference, name)(24, 4) if name == "CBAM" else getattr(reference, name)(24),
                       getattr(ak, name)(24, 4) if name == "CBAM" else getattr(ak, name)(24), seed=8)
    x = torch.randn(2, 24, 5, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(DEVICE)
    assert_same_under_checkpointing(real.train(), ours.train(), kernel_backend, x, use_reentrant, rtol=1e-10,
                                    atol=1e-10)
