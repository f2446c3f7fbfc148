"""attnkernels.models.ResidualNet against the official ResidualNet (Jongchan/attention-module
MODELS/model_resnet.py), built from its source text (tests/data/attention_module, verbatim) with
the two lines of bam.py that do not run fixed as a user's copy would be: the same state_dict keys
(in order) and shapes, the same initialization from the same seed, official state dicts (with and
without DataParallel's `module.` prefix, as a file or a dict) loading strict and giving the same
outputs, a training step with the same outputs, gradients and running statistics; both stems,
inputs other than 224x224, depth 18 and 50."""
import copy
import os
import subprocess
import warnings

import pytest
import torch
from torch import nn

import official_code
from attnkernels import models

MIRROR = "/work/.mirror/Jongchan+attention-module/repo"


@pytest.fixture(scope="module")
def official():
    """The official MODELS/model_resnet.py module (built from the source text; bam.py fixed)."""
    return official_code.load().model_resnet


def _official_net(official, *args):
    with warnings.catch_warnings():  # its init.kaiming_normal is deprecated (same numbers as _)
        warnings.simplefilter("ignore")
        return official.ResidualNet(*args)


def _global_pool(official_model):
    """The official ImageNet head pools with AvgPool2d(7), which runs on 7x7 maps only (224x224
    inputs): for other sizes the test swaps in the global pool it stands for."""
    official_model.avgpool = nn.AdaptiveAvgPool2d(1)
    return official_model


def _liven(model, seed=0, shape=(2, 3, 32, 32)):
    """Weights the comparisons can see: the biases (zero at init) and the CBAM spatial gates' BN
    weights (zero at init: a constant gate) random, then every BN's running statistics those of
    one random batch (with the defaults, an eval-mode net's activations vanish)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "SpatialGate" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if name.endswith("bn.weight") else 0.0))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(shape, generator=g))
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    return model.eval()


def _assert_close_out(got, want, rtol=1e-4):
    """fp32 logits of two deep nets that order their reductions differently: equal up to rtol,
    relative to the largest logit (1e-4: ResNet-50's rounding differences reach ~3e-5)."""
    scale = want.abs().max().item()
    assert 1e-3 < scale < 1e4, f"degenerate output scale {scale:.3g}: the check would be vacuous"
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)


def test_vendored_source_is_the_official_code():
    """tests/data/attention_module holds the repository's files unchanged."""
    if not os.path.isdir(MIRROR):
        pytest.skip("the mirror of Jongchan/attention-module is not on this machine")
    for name in official_code.FILES:
        text = subprocess.run(["git", "-C", MIRROR, "show", f"HEAD:MODELS/{name}.py"], capture_output=True,
                              text=True, check=True).stdout
        assert text == official_code.source(name), name


@pytest.mark.parametrize("network_type,depth,att_type", [
    ("ImageNet", 50, "BAM"), ("ImageNet", 50, "CBAM"), ("ImageNet", 101, "CBAM"), ("CIFAR100", 18, "CBAM"),
    ("CIFAR10", 34, "BAM"), ("ImageNet", 18, None)])
def test_state_dict_keys_are_the_official_ones(official, network_type, depth, att_type):
    """Same keys in the same order, same shapes (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        ours = models.ResidualNet(network_type, depth, 100, att_type)
        theirs = _official_net(official, network_type, depth, 100, att_type)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    n_att = sum(type(m).__name__ == (att_type or "-") for m in ours.modules())
    assert n_att == {"BAM": 3, "CBAM": sum(DEPTH_BLOCKS[depth]), None: 0}[att_type]


DEPTH_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


@pytest.mark.parametrize("att_type", ["BAM", "CBAM"])
def test_official_initialization(official, att_type):
    """The same seed gives the official weights exactly: the modules are built, and the official
    init loop runs, in the official order (the CBAM spatial gates' BN weights zero, the downsample
    convs and the Linear weights at their default init, every bias zero)."""
    torch.manual_seed(0)
    theirs = _official_net(official, "CIFAR10", 18, 10, att_type)
    torch.manual_seed(0)
    ours = models.ResidualNet("CIFAR10", 18, 10, att_type)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    spatial_bn = [v for k, v in a.items() if k.endswith("SpatialGate.spatial.bn.weight")]
    assert len(spatial_bn) == (8 if att_type == "CBAM" else 0) and all((v == 0).all() for v in spatial_bn)
    assert all((v == 0).all() for k, v in a.items() if k.endswith(".bias"))


@pytest.mark.parametrize("network_type,att_type,size", [("ImageNet", "CBAM", 224), ("CIFAR10", "BAM", 32)])
def test_official_checkpoint_loads_strict_and_matches(official, network_type, att_type, size, tmp_path):
    """An official training checkpoint (the DataParallel model's state_dict under "state_dict",
    as train_imagenet.py saves it) and a plain official state_dict both load strict into ours,
    which then computes the official model's outputs (at the input size each official head
    takes: 224 ImageNet, 32 CIFAR)."""
    torch.manual_seed(1)
    theirs = _liven(_official_net(official, network_type, 18, 10, att_type), shape=(2, 3, size, size))
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet", "best_prec1": 76.86,
                "state_dict": nn.DataParallel(theirs).state_dict()}, path)
    assert all(k.startswith("module.") for k in torch.load(path, weights_only=True)["state_dict"])
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = theirs(x)
    for source in (str(path), theirs.state_dict()):
        ours = models.ResidualNet(network_type, 18, 10, att_type)
        res = models.load_official_checkpoint(ours, source)
        assert not res.missing_keys and not res.unexpected_keys
        with torch.no_grad():
            _assert_close_out(ours.eval()(x), want)


def test_checkpoint_without_num_batches_tracked_loads():
    """State dicts from before torch 0.4.1 have no num_batches_tracked: they load strict (as
    torch fills them in for such files), and a wrong key still fails."""
    src = models.ResidualNet("CIFAR10", 18, 10, "BAM")
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = models.ResidualNet("CIFAR10", 18, 10, "BAM")
    models.load_official_checkpoint(ours, {"state_dict": {"module." + k: v for k, v in state.items()}})
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(ours.state_dict()[k], v), k
    state["fc.extra"] = state.pop("fc.bias")
    with pytest.raises(RuntimeError, match="fc"):
        models.load_official_checkpoint(ours, state)


@pytest.mark.parametrize("att_type", ["BAM", "CBAM"])
def test_training_step_matches_official(official, att_type):
    """Train mode, fp64, ImageNet stem at 64x64 (the official head's AvgPool2d(7) replaced by the
    global pool): the same logits, parameter gradients and running statistics (BatchNorm momentum
    0.1, the CBAM spatial BN's 0.01) after a step. (The biases of the convs and Linears that feed a
    batch-statistics BN have a zero gradient, rounding noise: the tolerance is relative to the
    largest gradient.)"""
    torch.manual_seed(3)
    theirs = _liven(_global_pool(_official_net(official, "ImageNet", 18, 100, att_type)), shape=(2, 3, 64, 64))
    theirs = theirs.train().double()
    ours = models.ResidualNet("ImageNet", 18, 100, att_type).double()
    models.load_official_checkpoint(ours, theirs.state_dict())
    ours.train()
    before = {n: b.clone() for n, b in ours.named_buffers()}
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64)
    target = torch.randint(0, 100, (2,), generator=g)
    outs = []
    for m in (ours, theirs):
        out = m(x)
        nn.functional.cross_entropy(out, target).backward()
        outs.append(out)
    _assert_close_out(outs[0], outs[1], rtol=1e-10)
    p_theirs = dict(theirs.named_parameters())
    gscale = max(p.grad.abs().max().item() for p in p_theirs.values())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, p_theirs[name].grad, rtol=1e-8, atol=1e-10 * gscale, msg=name)
    b_theirs = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        torch.testing.assert_close(b, b_theirs[name], rtol=1e-10, atol=1e-12, msg=name)
        if name.endswith("running_mean"):  # (updated by the step: the check is not vacuous)
            assert not torch.equal(b, before[name]), name


@pytest.mark.parametrize("depth,att_type,shape", [
    (50, "CBAM", (2, 3, 48, 64)), (18, "BAM", (1, 3, 33, 33)), (18, "CBAM", (1, 3, 97, 131)),
    (18, "BAM", (2, 3, 64, 40))])
def test_any_input_size(official, depth, att_type, shape):
    """ImageNet stem at sizes other than 224 (non-square, odd, batch 1): ours computes what the
    official model computes with its AvgPool2d(7) head replaced by the global pool it stands for."""
    torch.manual_seed(5)
    theirs = _liven(_global_pool(_official_net(official, "ImageNet", depth, 10, att_type)), shape=(2,) + shape[1:])
    ours = models.ResidualNet("ImageNet", depth, 10, att_type)
    models.load_official_checkpoint(ours, theirs.state_dict())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got, want = ours.eval()(x), theirs(x)
    assert got.shape == (shape[0], 10)
    _assert_close_out(got, want)


def test_cifar_stem_other_sizes():
    """The CIFAR stem runs at any size too (the official F.avg_pool2d(x, 4) pools globally only at
    32x32): the logits are the fc of layer4's global mean."""
    torch.manual_seed(7)
    m = models.ResidualNet("CIFAR10", 18, 10, "CBAM").eval()
    x = torch.randn(1, 3, 40, 24)
    feats = {}
    m.layer4.register_forward_hook(lambda mod, i, o: feats.setdefault("y", o))
    with torch.no_grad():
        out = m(x)
    assert feats["y"].shape == (1, 512, 5, 3)
    torch.testing.assert_close(out, m.fc(feats["y"].mean((2, 3))))


@pytest.mark.parametrize("kw,name", [
    (dict(network_type="imagenet"), "network_type"), (dict(depth=152), "depth"), (dict(att_type="SE"), "att_type")])
def test_bad_arguments(kw, name):
    args = dict(network_type="ImageNet", depth=18, num_classes=10, att_type=None) | kw
    with pytest.raises(ValueError, match=name):
        models.ResidualNet(**args)


def test_attention_classes_have_reference_interfaces():
    """The one switch point: whatever classes _attention_classes returns take the official
    constructor arguments and have the reference modules' state_dicts."""
    from attnkernels import reference
    bam, cbam = models._attention_classes()
    assert issubclass(bam, reference.BAM) and issubclass(cbam, reference.CBAM)
    assert list(bam(64).state_dict()) == list(reference.BAM(64).state_dict())
    assert list(cbam(64, 16).state_dict()) == list(reference.CBAM(64, 16).state_dict())
    assert copy.deepcopy(models.ResidualNet("CIFAR10", 18, 10, "CBAM")).layer1[0].cbam.__class__ is cbam
