"""DistributedDataParallel: a training step of a converted model (attnkernels.convert: fused
drop-ins on a kernel backend) in two processes (torch.multiprocessing.spawn, gloo, CPU), against
the same step of the unconverted model: every rank holds the same allreduced gradients (bit for
bit across ranks, as DDP guarantees), the converted model's equal the unconverted model's, and so
do the parameters and BatchNorm buffers after an SGD step. One case per model factory, run on each
of its CPU kernel backends."""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import attnkernels as ak
from attnkernels._dropin import FusedDropin

WORLD = 2


def _mobilenet_v3_small():
    import torchvision
    return torchvision.models.mobilenet_v3_small(num_classes=10, dropout=0.0)


def _small_se_net():
    """Two SE blocks of two libraries (torchvision's SqueezeExcitation, timm's SEModule) between
    convs and BatchNorms."""
    import timm.layers
    import torchvision
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        torchvision.ops.SqueezeExcitation(16, 4),
        nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
        timm.layers.SEModule(24, rd_ratio=0.25),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


def _residualnet(att_type):
    def make():
        from attnkernels.models import ResidualNet
        return ResidualNet("ImageNet", 18, 10, att_type)
    return make


# name -> (factory, per-rank input shape, classes, the CPU kernel backends it runs on). Small
# inputs: the Triton interpreter and cuda-emu run every GPU thread on the CPU, and the interpreter
# takes seconds per block's forward and backward, so the models with many blocks run on cuda-emu
# only. 64x64 leaves 2x2 maps at the end of the stride-32 nets: with 1x1 maps (32x32) the last
# BatchNorms would normalize N = 2 values, whose gradient amplifies fp32 rounding ~100-fold.
MODELS = {
    "small_se_net": (_small_se_net, (2, 3, 12, 12), 10, ("triton", "cuda-emu")),
    "mobilenet_v3_small_se": (_mobilenet_v3_small, (2, 3, 64, 64), 10, ("cuda-emu",)),
    "resnet18_cbam": (_residualnet("CBAM"), (2, 3, 64, 64), 10, ("cuda-emu",)),
    "resnet18_bam": (_residualnet("BAM"), (2, 3, 64, 64), 10, ("cuda-emu",)),
}
CPU_BACKENDS = [b for b in ak.available_backends("cpu") if b != "reference"]


def _worker(rank, init_file, model_name, backends, out_dir):
    """One rank: the same step of the unconverted model (eager) and of its converted copies (the
    fused drop-ins on each of `backends`), each wrapped in DDP, on this rank's own batch. Saves
    the loss, the gradients and the state after the step of each to out_dir/rank<rank>.pt."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        factory, shape, classes, _ = MODELS[model_name]
        torch.manual_seed(0)  # the same weights on every rank
        eager = factory()
        runs = [("eager", eager, "reference")]
        runs += [(be, ak.convert(copy.deepcopy(eager)), be) for be in backends]
        g = torch.Generator().manual_seed(100 + rank)  # a different batch per rank
        x = torch.randn(shape, generator=g)
        target = torch.randint(0, classes, (shape[0],), generator=g)
        out = {"fused_blocks": sum(isinstance(m, FusedDropin) and m.fused_options() is not None
                                   for m in runs[-1][1].modules())}
        for name, model, be in runs:
            ddp = torch.nn.parallel.DistributedDataParallel(model.train())
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            # process-wide (not a `with ak.backend` scope): autograd may run the backward on
            # another thread
            prev = ak.set_backend(be)
            try:
                loss = F.cross_entropy(ddp(x), target)
                loss.backward()
            finally:
                ak.set_backend(prev)
            out[name] = {"loss": loss.detach(),
                         "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
            opt.step()
            out[name]["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _assert_close_dict(a, b, what, rtol=1e-4):
    """Float entries equal up to rtol relative to the largest magnitude among them (the gradients
    of conv biases ahead of a batch-statistics BatchNorm are rounding noise around 0); integer
    entries (num_batches_tracked) exactly."""
    assert list(a) == list(b), what
    floats = [v for v in b.values() if v.is_floating_point()]
    scale = max(v.abs().max().item() for v in floats)
    assert scale > 0, what
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * scale, msg=f"{what}: {k}")
        else:
            assert torch.equal(a[k], b[k]), f"{what}: {k}"


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("model_name", list(MODELS))
def test_ddp_training_step_converted_matches_eager(model_name, tmp_path):
    factory, _, _, want = MODELS[model_name]
    backends = [be for be in want if be in CPU_BACKENDS]
    if not backends:
        pytest.skip(f"none of {want} runs here")
    assert any(isinstance(m, FusedDropin) for m in ak.convert(factory()).modules()), \
        f"convert() swaps none of {model_name}'s attention blocks"
    # spawn (never fork: the parent's threads and Triton state); the children inherit
    # TRITON_INTERPRET from the environment and sys.path from the parent. One pair of processes
    # runs every backend: most of a case's time is the children's imports.
    mp.spawn(_worker, args=(str(tmp_path / "rdzv"), model_name, backends, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[0]["fused_blocks"] > 0
    params = list(ranks[0]["eager"]["grads"])
    for kind in ["eager"] + backends:
        # allreduced: from different batches, bit-identical gradients, hence parameters after the
        # step, on every rank (the BatchNorm buffers are each rank's own: DDP broadcasts rank 0's
        # before a forward, which then updates them from the rank's batch)
        assert not torch.equal(ranks[0][kind]["loss"], ranks[1][kind]["loss"])
        for r in range(1, WORLD):
            for what in ("grads", "state"):
                a, b = ranks[0][kind][what], ranks[r][kind][what]
                assert all(torch.equal(a[k], b[k]) for k in params), f"{kind}: {what} differ between ranks 0 and {r}"
    for r, res in enumerate(ranks):
        for be in backends:
            torch.testing.assert_close(res[be]["loss"], res["eager"]["loss"], rtol=1e-5, atol=1e-6)
            _assert_close_dict(res[be]["grads"], res["eager"]["grads"], f"{be}, rank {r}: grads")
            _assert_close_dict(res[be]["state"], res["eager"]["state"], f"{be}, rank {r}: state after the step")
