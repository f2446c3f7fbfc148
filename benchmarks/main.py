#!/usr/bin/env python3
"""`make bench`: every op's benchmark on a CUDA GPU, else a CPU demo that does real work.

    python3 benchmarks/main.py                 # GPU: bench_se.py's standard set, then bench_cbam.py,
                                               #      bench_bam.py, bench_sca.py, sca_decoder.py --quick
    python3 benchmarks/main.py --quick         # GPU: every benchmark --quick (--full: every one full)
    python3 benchmarks/main.py --ops se,sca --dtypes fp32   # a subset; the other arguments pass through
    python3 benchmarks/main.py --demo          # the model demo (CPU, or CUDA tensors on a GPU)

GPU: each benchmark writes its results as SE's do (benchmarks/results/<op>-<gpu>-<date>.{csv,md,png}:
harness.py) and prints its tables; at the end, each one's "Targets" table again (its issue's GPU
targets read off the rows). Arguments pass through to every benchmark that takes them (a
benchmark's own options, e.g. bench_se.py's --suites, reach only it); without --quick / --full,
SE runs its standard set and the others --quick. Exit status 1 if any benchmark failed.

Demo: torchvision mobilenet_v3_large and efficientnet_b0, and timm's efficientnet_b0 and
ese_vovnet19b_dw (ESE blocks) and resnet26 with CBAM in every block (timm's CbamModule) when timm
is installed, and the official ResNet-50+BAM and ResNet-18+CBAM (attnkernels.models.ResidualNet,
the official module layout) (random init, eval), attention blocks swapped by attnkernels.convert,
run on each backend available for the device, outputs checked against the unconverted model (max
|diff|, PASS/FAIL; exit status 1 on any FAIL). A model whose blocks convert() does not swap yet
(an op whose fused front end is missing) says so and still runs, unconverted.
Then the SCA-CNN captioning decoder (sca_decoder.py's CaptionDecoder: SCA + LSTMCell + vocabulary
Linear, T teacher-forced steps) with attnkernels.SCA on each backend against the same decoder with
the eager reference.SCA: the captions' logits checked (PASS/FAIL), small on the CPU.
"""
import os
import sys
import time

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # the Triton kernels run on CPU tensors only under the interpreter, which must be switched
    # on before attnkernels.triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (os.path.dirname(_HERE), _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import attnkernels as ak  # noqa: E402
from attnkernels.convert import convert_report  # noqa: E402

# (backend, input shape) per device. The Triton interpreter and cuda-emu execute every GPU
# thread on the CPU, so on the CPU they get a smaller image to keep the demo to a few minutes.
CPU_RUNS = [("reference", (2, 3, 224, 224)), ("triton", (1, 3, 96, 96)),
            ("cuda-emu", (2, 3, 224, 224))]
# the ResNets with CBAM / BAM blocks (wide maps, more work per block) get smaller images still
CPU_RUNS_RESNET = [("reference", (2, 3, 224, 224)), ("triton", (1, 3, 64, 64)),
                   ("cuda-emu", (1, 3, 128, 128))]
CUDA_RUNS = [("reference", (2, 3, 224, 224)), ("triton", (2, 3, 224, 224)),
             ("cuda", (2, 3, 224, 224))]


def _time(fn, device, repeat, warmup=True):
    """(output, best wall time in ms over `repeat` calls after one warm-up call)."""
    out = fn() if warmup else None  # warm-up (Triton JIT, allocator)
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return out, best * 1e3


def calibrate_bn(model, device):
    """Random-init nets in eval mode shrink activations to ~1e-10 (BN running stats at their
    defaults), so an output comparison would be vacuous: recompute the BN statistics on one
    random batch so activations and SE gates are O(1)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(device))
    return model.eval()


def _live_spatial_gates(model):
    """The official initialization zeroes each CBAM spatial gate's BatchNorm weight (its gate is
    then the constant sigmoid(0) until trained); a trained model's are not zero: set them to 1 so
    the comparison covers the spatial gates."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("SpatialGate.spatial.bn.weight"):
                p.fill_(1.0)
    return model


def _models(torchvision):
    """(name, factory, CPU runs) of the demo's models: torchvision's (SqueezeExcitation blocks),
    when timm is installed its efficientnet_b0 (SE blocks of its own class), ese_vovnet19b_dw
    (EffectiveSEModule: the fused op's single-layer form) and resnet26 with CbamModule blocks,
    and the official ResidualNet with BAM / CBAM (attnkernels.models)."""
    from attnkernels.models import ResidualNet
    models = [(arch, lambda arch=arch: getattr(torchvision.models, arch)(weights=None), CPU_RUNS)
              for arch in ("mobilenet_v3_large", "efficientnet_b0")]
    try:
        import timm
        models.append(("timm efficientnet_b0", lambda: timm.create_model("efficientnet_b0", pretrained=False),
                       CPU_RUNS))
        models.append(("timm ese_vovnet19b_dw", lambda: timm.create_model("ese_vovnet19b_dw", pretrained=False),
                       CPU_RUNS))
        # zero_init_last=False: timm zeroes each block's last BN weight by default, which makes every
        # residual branch, CBAM included, output 0 (the comparison would be vacuous)
        models.append(("timm resnet26 + cbam", lambda: timm.create_model(
            "resnet26", pretrained=False, block_args=dict(attn_layer="cbam"), zero_init_last=False),
            CPU_RUNS_RESNET))
    except ImportError:
        pass
    models.append(("official ResNet-50 + BAM", lambda: ResidualNet("ImageNet", 50, 1000, "BAM"), CPU_RUNS_RESNET))
    models.append(("official ResNet-18 + CBAM", lambda: _live_spatial_gates(ResidualNet("ImageNet", 18, 1000, "CBAM")),
                   CPU_RUNS_RESNET))
    return models


# The demo's SCA-CNN decoder: (features C, H=W), batch, steps T, and the decoder's sizes. On the
# CPU small (the interpreter and cuda-emu run every GPU thread there); on a GPU the official sizes.
DECODER_CPU = dict(C=32, H=5, N=2, T=3, sizes=dict(k=16, d=24, emb=8, vocab=40))
DECODER_CUDA = dict(C=512, H=14, N=8, T=4, sizes=dict(k=512, d=1000, emb=512, vocab=10000))


def _compare(rows, name, be, shape, run_orig, run_new, device, interp):
    """Runs run_orig() and, on backend `be`, run_new(); appends the demo's row (times, max |diff|,
    PASS/FAIL: fp32, relative to the output's scale; GPU convs may use TF32 in both alike) and
    prints it. Returns False on FAIL."""
    repeat = 1 if interp else 3
    with torch.no_grad():
        want, t_orig = _time(run_orig, device, repeat)
        try:
            with ak.backend(be):
                got, t_new = _time(run_new, device, repeat, warmup=not interp)
        except Exception as e:
            rows.append((name, be, shape, f"{t_orig:.1f}", "-", "-", f"FAIL ({type(e).__name__}: {str(e)[:80]})"))
            print(f"  {be:10s} {shape:12s} FAIL ({type(e).__name__}: {e})", flush=True)
            return False
    diff = (got.float() - want.float()).abs().max().item()
    scale = want.abs().max().item()
    ok = (bool(torch.isfinite(got).all()) and scale > 0
          and torch.allclose(got, want, rtol=1e-3, atol=1e-4 * scale))
    rows.append((name, be, shape, f"{t_orig:.1f}", f"{t_new:.1f}", f"{diff:.2e} / {scale:.2f}",
                 "PASS" if ok else "FAIL"))
    print(f"  {be:10s} {shape:12s} max|diff| {diff:.2e} (max|out| {scale:.2f})  "
          f"{'PASS' if ok else 'FAIL'}  ({t_new:.1f} ms vs {t_orig:.1f} ms unconverted)", flush=True)
    return ok


def demo_decoder(device, avail, rows):
    """The SCA-CNN decoder (sca_decoder.CaptionDecoder, order "cs" with the official rescaling):
    the same captions' logits (N, T, vocab) with attnkernels.SCA on each backend vs with the eager
    reference.SCA (same state_dict). Returns False if any run FAILed."""
    import harness
    import sca_decoder
    cfg = DECODER_CUDA if device.type == "cuda" else DECODER_CPU
    harness.set_device(device.type)
    eager, fused = sca_decoder.make_decoders(cfg["C"], cfg["sizes"], torch.float32)
    name = f"SCA-CNN decoder (T={cfg['T']})"
    shape = f"{cfg['N']}x{cfg['C']}x{cfg['H']}x{cfg['H']}"
    sz = cfg["sizes"]
    print(f"\n{name}: SCA (order cs, scale) + LSTMCell + Linear, k={sz['k']} d={sz['d']} emb={sz['emb']} "
          f"vocab={sz['vocab']}; features {shape}; the captions' logits vs the decoder with the eager reference.SCA")
    if fused is None:
        rows.append((name, "-", shape, "-", "-", "-", "skipped (no attnkernels.SCA)"))
        return True
    g = torch.Generator().manual_seed(3)
    V = torch.randn(cfg["N"], cfg["C"], cfg["H"], cfg["H"], generator=g).to(device)
    words = torch.randint(0, sz["vocab"], (cfg["N"], cfg["T"]), generator=g).to(device)
    ok = True
    for be in ("reference",) + tuple(b for b in ("triton", "cuda", "cuda-emu") if b in avail):
        ok &= _compare(rows, name, be, shape, lambda: eager(V, words), lambda: fused(V, words), device,
                       device.type == "cpu" and be == "triton")
    return ok


def demo(device):
    import torchvision

    avail = ak.available_backends(device)
    print(f"attnkernels {ak.__version__}; torch {torch.__version__}; torchvision "
          f"{torchvision.__version__}; device {device}; backends here: {avail}")
    if device.type == "cpu":
        print("(on the CPU, Triton runs under TRITON_INTERPRET=1, which is slow, so its runs use a "
              "1x3x96x96 image (1x3x64x64 for the ResNets with CBAM/BAM); reference and cuda-emu (the "
              "CUDA kernels compiled against an emulator) use 2x3x224x224 (cuda-emu 1x3x128x128 for "
              "those ResNets))")
    rows, failed = [], False
    for arch, make, cpu_runs in _models(torchvision):
        runs = CUDA_RUNS if device.type == "cuda" else cpu_runs
        torch.manual_seed(0)
        orig = calibrate_bn(make().to(device), device)
        model = ak.convert(orig, inplace=False)
        rep = convert_report(model)
        print(f"\n{arch}: {sum(rep['swapped'].values())} attention blocks swapped {rep['swapped']}; "
              f"fused configs {rep['by_config']}; eager fallbacks {rep['eager_fallback']}; "
              f"default backend on {rep['device']}: {rep['backend']}"
              + ("" if rep["swapped"] else " (convert() swaps none of its blocks yet: it runs unconverted)"))
        for be, shape in runs:
            label = "x".join(map(str, shape))
            if be != "reference" and be not in avail:
                rows.append((arch, be, label, "-", "-", "-", "skipped (unavailable)"))
                continue
            x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
            failed |= not _compare(rows, arch, be, label, lambda: orig(x), lambda: model(x), device,
                                   device.type == "cpu" and be == "triton")
    failed |= not demo_decoder(device, avail, rows)
    head = ("model", "backend", "input", "unconverted ms", "converted ms", "max|diff| / max|out|",
            "result")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    print("\n" + line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    if device.type == "cpu":
        print("\nWall times on the CPU: the interpreted/emulated kernels are for correctness, "
              "not speed. The benchmarks need a CUDA GPU (`make bench` there runs them).")
    print("\nDEMO " + ("FAILED" if failed else "PASSED"))
    return 1 if failed else 0


# `make bench` on a GPU: (name, script module) in run order
BENCHES = (("se", "bench_se"), ("cbam", "bench_cbam"), ("bam", "bench_bam"), ("sca", "bench_sca"),
           ("decoder", "sca_decoder"))


def args_for(parser, argv, op):
    """(the arguments of argv that `parser` takes, the ones it does not): each option with its
    value when it takes one; --name gets "-<op>" appended (each benchmark its own files)."""
    keep, dropped, i = [], [], 0
    while i < len(argv):
        name, eq, _ = argv[i].partition("=")
        act = parser._option_string_actions.get(name)
        n = 1 + (act is not None and act.nargs != 0 and not eq)
        chunk = list(argv[i:i + n])
        if act is not None and act.dest == "name":
            chunk[-1] += f"-{op}"
        (keep if act is not None else dropped).extend(chunk)
        i += n
    return keep, dropped


def bench_all(argv):
    """Each benchmark of BENCHES (--ops narrows them) on the GPU with the arguments it takes; SE
    without a preset runs its standard set, the others --quick. Then each one's Targets table
    again. Returns 1 if any failed."""
    import importlib

    import harness
    ops = [op for op, _ in BENCHES]
    if "--ops" in argv:
        i = argv.index("--ops")
        ops = harness.csv_list(argv[i + 1] if i + 1 < len(argv) else "", ops, "op", "main.py")
        argv = argv[:i] + argv[i + 2:]
    preset = any(a in ("--quick", "--full") for a in argv)
    results = []
    for op, script in BENCHES:
        if op not in ops:
            continue
        mod = importlib.import_module(script)
        if op == "se":
            args, dropped = list(argv), []  # (bench_se.py rejects what it does not take)
        else:
            parser = mod.parser()
            args, dropped = args_for(parser, argv, op)
            if not preset:
                args = ["--quick"] + args
        print(f"\n==== {script}.py {' '.join(args)}" + (f"  (not for it: {' '.join(dropped)})" if dropped else ""),
              flush=True)
        n_runs = len(harness.RUNS)
        try:
            rc = mod.main(args)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # the next benchmark still runs
            print(f"main.py: {script}.py failed: {type(e).__name__}: {e}", flush=True)
            rc = 1
        stem = harness.RUNS[-1] if len(harness.RUNS) > n_runs else None
        results.append((op, script, rc, stem))
        if rc == 130:  # Ctrl-C: its report is written; no more benchmarks
            break
    print("\n==== make bench: results")
    for op, script, rc, stem in results:
        print(f"{script}.py: exit {rc}" + (f"; {stem}.{{csv,md,png}}" if stem else ""))
        md = f"{stem}.md" if stem else None
        if md and os.path.exists(md):
            text = open(md).read()
            if "### Targets" in text:
                print("\n" + text[text.index("### Targets"):].split("### Detail")[0].rstrip() + "\n")
    return 1 if any(rc for _, _, rc, _ in results) else 0


def main(argv):
    if "--demo" in argv:
        return demo(torch.device("cuda" if HAS_CUDA else "cpu"))
    if not HAS_CUDA:
        print("No GPU found: running the CPU demo instead (benchmarks need a CUDA GPU)", flush=True)
        return demo(torch.device("cpu"))
    return bench_all(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
