"""attnkernels.BAM is a drop-in for attnkernels.reference.BAM (the official BAM's layout): same
state_dict, outputs, gradients and BatchNorm bookkeeping in train and eval mode, on every kernel
backend; the eager fallbacks; and attnkernels.convert on the reference and on a copy of the
official code."""
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
from utils import assert_matches, assert_same_state, assert_same_under_checkpointing, full_size_aten_ops, randomize_

bam_module = sys.modules["attnkernels.bam"]
TOL = dict(rtol=1e-5, atol=1e-5)


def _pair(combine="prod", C=32, reduction=8, seed=0, **kw):
    """(reference BAM, ours) with the same random state (weights, BatchNorm statistics, counts)."""
    ref = randomize_(reference.BAM(C, reduction, combine=combine, **kw), torch.Generator().manual_seed(seed))
    ours = ak.BAM(C, reduction, combine=combine, **kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.to(DEVICE), ours.to(DEVICE)


def _x(shape, seed, channels_last=False):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _step(ref, ours, backend, x, fused=True, block=None):
    """One forward and backward of both on copies of x, and of ref in float64: the same output and
    gradients (of x and every parameter) within the error bar of utils.assert_matches (the
    gradient of a bias before a BatchNorm in training is ~0, a sum of cancelling terms: only an
    error bar from float64 can judge it), the same state afterwards (running statistics,
    num_batches_tracked); the fused op ran exactly when `fused` (and the BAM block's
    fused_options() agrees; block: ours by default)."""
    assert ((block or ours).fused_options() is not None) == fused
    ref64 = copy.deepcopy(ref).double()
    xa, xb, x64 = (x.clone().requires_grad_() for x in (x, x, x.double()))
    with ak.backend(backend), mock.patch.object(bam_module, "bam", wraps=bam_module.bam) as op:
        ya = ours(xa)
    assert op.call_count == fused
    yb, y64 = ref(xb), ref64(x64)
    assert_matches(ya, yb, y64, "y")
    assert ya.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(ya.shape, generator=torch.Generator().manual_seed(99)).to(DEVICE)
    for y, d in ((ya, dy), (yb, dy), (y64, dy.double())):
        y.backward(d)
    assert_matches(xa.grad, xb.grad, x64.grad, "dx")
    grads64 = dict(zip((n for n, _ in ours.named_parameters()), (p.grad for p in ref64.parameters())))
    for (name, pa), pb, p64 in zip(ours.named_parameters(), ref.parameters(), ref64.parameters()):
        w64 = grads64.get(name[:-len("bias")] + "weight") if name.endswith("bias") else None
        if w64 is not None and p64.grad.abs().max() <= 1e-9 * w64.abs().max():
            # a bias in front of a BatchNorm in training: its gradient is 0 in exact arithmetic, and
            # both fp32 paths return rounding noise; bound it by fp32's precision at the size of the
            # gradients of the layer's weight, whose sums it shares
            bound = 1e-5 * float(w64.abs().max()) if pa.dtype == torch.float32 else 1e-10 * float(w64.abs().max())
            assert pa.grad.abs().max() <= bound, (name, float(pa.grad.abs().max()), bound)
            continue
        assert_matches(pa.grad, pb.grad, p64.grad, name)
    assert_same_state(ours, ref, **TOL)
    ours.zero_grad()
    ref.zero_grad()


def test_bam_module_state_dict_round_trip():
    ref, ours = _pair(reduction=4)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in ref.named_modules()]
    ref2 = reference.BAM(32, 4)
    ref2.load_state_dict(ours.state_dict(), strict=True)
    assert_same_state(ref2, ours)
    assert ours.fused_options() == ("prod",)
    assert "combine='prod'" in repr(ours)


def _untracked_bn(m):
    m.channel_att.gate_c.gate_c_bn_1 = nn.BatchNorm1d(m.channel_att.gate_c.gate_c_bn_1.num_features,
                                                      track_running_stats=False)


# (combine, channels_last, what else): the BatchNorm's momentum=None (a cumulative average over
# num_batches_tracked) and track_running_stats=False (batch statistics in eval too)
MODULE_CASES = [("prod", False, None), ("sum", True, None), ("prod", True, "momentum_none"),
                ("sum", False, "untracked")]


@pytest.mark.parametrize("combine,channels_last,other", MODULE_CASES, ids=["prod-nchw", "sum-cl", "momentum_none",
                                                                           "untracked"])
def test_bam_module_matches_reference(kernel_backend, combine, channels_last, other):
    """Two training steps, then eval: outputs, gradients and the BatchNorms' bookkeeping (all of
    them: the spatial branch's run in torch, the channel gate's in the fused op) as eager."""
    ref, ours = _pair(combine, C=40, reduction=5)
    for m in (ref, ours):
        if other == "momentum_none":
            m.channel_att.gate_c.gate_c_bn_1.momentum = None
        elif other == "untracked":
            _untracked_bn(m)
            m.to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    for step, train in enumerate([True, True, False]):
        ref.train(train)
        ours.train(train)
        _step(ref, ours, kernel_backend, _x((3, 40, 6, 5), step, channels_last))


def _official_module():
    """The official BAM (MODELS/bam.py) as a project holds it: tests/official_code.py's copy, the two
    lines that keep it from running fixed as a user fixes them."""
    return official_code.load().bam


@pytest.mark.filterwarnings("ignore:nn.functional.sigmoid is deprecated")
def test_official_bam_converted(kernel_backend):
    """attnkernels.convert finds the official BAM in a model (by class name and layout), swaps in
    ours with its parameters (the same objects) and buffers, and the model computes the same in
    train and eval mode."""
    official = _official_module()
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Conv2d(8, 64, 3, padding=1), official.BAM(64), nn.Conv2d(64, 4, 1))
    randomize_(model, g)
    model = model.to(DEVICE)
    eager = copy.deepcopy(model)
    params = list(model[1].parameters())
    ak.convert(model)
    assert type(model[1]) is ak.BAM and model[1].combine == "prod"
    assert all(a is b for a, b in zip(model[1].parameters(), params))
    assert ak.convert_report(model)["by_config"] == {"prod": 1}
    for step, train in enumerate([True, True, False]):
        model.train(train)
        eager.train(train)
        _step(eager, model, kernel_backend, _x((3, 8, 6, 5), 20 + step), block=model[1])


def test_convert_reference_bam_and_leave_others():
    """reference.BAM (any combine, num_layers) -> ours; ours and blocks merely named BAM stay."""
    class BAM(nn.Module):  # a class of another layout under the same name
        def __init__(self):
            super().__init__()
            self.channel_att = nn.Linear(2, 2)

    model = nn.Sequential(reference.BAM(32, 4, combine="sum"), reference.BAM(32, 8, num_layers=2),
                          ak.BAM(16, 4), BAM())
    state = copy.deepcopy(model.state_dict())
    ak.convert(model)
    assert [type(m) for m in model] == [ak.BAM, ak.BAM, ak.BAM, BAM]
    assert model[0].combine == "sum" and model[1].fused_options() is None  # (num_layers=2: eager)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def _sync_bn(m):
    bn = m.channel_att.gate_c.gate_c_bn_1
    sync = nn.SyncBatchNorm(bn.num_features)
    sync.load_state_dict(bn.state_dict())
    m.channel_att.gate_c.gate_c_bn_1 = sync


def _leaky(m):
    m.channel_att.gate_c.gate_c_relu_1 = nn.LeakyReLU(0.1)


def _hook(m):
    m.channel_att.gate_c.gate_c_fc_0.register_forward_hook(lambda mod, args, out: out * 2)


@pytest.mark.parametrize("change", [_sync_bn, _leaky, _hook, "num_layers"], ids=["syncbn", "leaky", "hook",
                                                                                  "num_layers"])
def test_bam_module_unfusable_configuration_runs_eagerly(kernel_backend, change):
    """SyncBatchNorm (statistics across processes), another activation, hooks on the channel
    gate's modules (which the fused call would skip), num_layers != 1: the reference forward."""
    ref, ours = _pair(num_layers=2) if change == "num_layers" else _pair()
    if change != "num_layers":
        change(ref)
        change(ours)
    for step, train in enumerate([True, False]):
        ref.train(train)
        ours.train(train)
        _step(ref, ours, kernel_backend, _x((3, 32, 5, 4), 30 + step), fused=False)


def test_bam_module_batch_of_one_in_training(kernel_backend):
    """One sample in training: BatchNorm1d's error, with the same bookkeeping as eager (no branch
    ran on); in eval it runs fused."""
    ref, ours = _pair()
    x = _x((1, 32, 5, 4), 40)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ref(x)
    with ak.backend(kernel_backend), pytest.raises(ValueError, match="more than 1 value per channel"):
        ours(x)
    assert_same_state(ours, ref)
    ref.eval()
    ours.eval()
    _step(ref, ours, kernel_backend, x)


def test_bam_module_fx_symbolic_trace(kernel_backend):
    """torch.fx.symbolic_trace keeps the fused call as one leaf (its modules as get_attr nodes), and
    the traced module does the BatchNorm's bookkeeping at each call, as the module does."""
    ref, ours = _pair()
    traced = torch.fx.symbolic_trace(ours)
    assert any(n.op == "call_function" and n.target is bam_module._fused_bam_call for n in traced.graph.nodes)
    for step in range(2):
        x = _x((3, 32, 5, 4), 50 + step)
        with ak.backend(kernel_backend):
            y = traced(x)
        torch.testing.assert_close(y, ref(x), **TOL)
    assert_same_state(ours, ref, **TOL)


def test_bam_module_compile_fullgraph(kernel_backend):
    torch._dynamo.reset()
    ref, ours = _pair(combine="sum")
    eager = copy.deepcopy(ours)
    compiled = torch.compile(ours, fullgraph=True)
    for step in range(2):
        x = _x((3, 32, 5, 4), 60 + step, channels_last=True)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        with ak.backend(kernel_backend):
            ya, yb = compiled(xa), eager(xb)
            torch.testing.assert_close(ya, yb, **TOL)
            ya.sum().backward()
            yb.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    assert_same_state(ours, eager, **TOL)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script")
def test_bam_module_jit_script(kernel_backend):
    """TorchScript compiles the eager forward (FusedDropin): the scripted module runs it."""
    ref, ours = _pair()
    scripted = torch.jit.script(ours.eval())
    x = _x((2, 32, 5, 4), 70)
    torch.testing.assert_close(scripted(x), ref.eval()(x), **TOL)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_bam_module_is_fused(kernel_backend, channels_last):
    """A training step of the module: the only aten compute ops on a tensor of x's size are the
    spatial branch's 1x1 reduce convolution on x, its backward, and the one add where x's two
    gradients meet (the fused op's and the branch's)."""
    _, ours = _pair(C=32, reduction=4)
    x = _x((3, 32, 6, 5), 80, channels_last).requires_grad_()
    dy = torch.randn_like(x)

    def run():
        with ak.backend(kernel_backend):
            ours(x).backward(dy)
    _, ops = full_size_aten_ops(run, x.numel())
    names = sorted(name for name, _ in ops)
    assert names == ["aten::add", "aten::convolution", "aten::convolution_backward"], ops
    assert x.grad is not None


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_bam_module_under_activation_checkpointing(kernel_backend, use_reentrant):
    """In training mode under torch.utils.checkpoint (the forward, BatchNorm bookkeeping included,
    runs again in the backward): eager's gradients and running statistics."""
    ref, ours = (m.double().train() for m in _pair(seed=9))
    # fp64: b0's gradient, ahead of a batch-statistics BatchNorm, is rounding noise around 0
    assert_same_under_checkpointing(ref, ours, kernel_backend, _x((3, 32, 5, 4), 41).double(), use_reentrant,
                                    rtol=1e-9, atol=1e-10)
