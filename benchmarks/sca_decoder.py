#!/usr/bin/env python3
"""SCA-CNN captioning decoder (CUDA GPU): T teacher-forced steps of an LSTM decoder whose hidden
state attends over the image features with SCA at every step, with the fused attnkernels.SCA vs
the eager reference (attnkernels.reference.SCA) vs torch.compile of the eager step: time per
step, peak memory, and the same logits (and feature gradients).

One step (SCA-CNN, Chen et al. 2017, with the official code's rescaling, scale=True):
    X_t      = SCA(V, h_{t-1})                          channel then spatial attention ("cs")
    h_t, c_t = LSTMCell([embed(w_t), mean_hw(X_t)], (h_{t-1}, c_{t-1}))
    logits_t = Linear(h_t)                              (vocabulary)
at the official sizes: V (N, 512, 14, 14) or (N, 2048, 7, 7), k = 512 attention units, hidden
size d = 1000; word embedding 512, vocabulary 10000.

    python3 benchmarks/sca_decoder.py --quick      # both feature shapes at batch 32, T = 16, bf16
    python3 benchmarks/sca_decoder.py              # batches 1, 32, 128
    python3 benchmarks/sca_decoder.py --steps 20 --dtypes fp32,bf16 --impls eager,cuda

Modes: fwd = inference (no_grad, the T steps); fwdbwd = training (cross entropy over the T steps'
logits, torch.autograd.grad with respect to V and every parameter). ms is the time of the T
steps; "ms/step" = ms / T. Method (timing, rotation of fresh inputs, peak memory, the guard on the
logits (fwd) or dV (fwdbwd) against eager): benchmarks/harness.py. compile = torch.compile of
the eager decoder's step (the loop over steps stays in Python, as a decoder is run).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import harness as H  # noqa: E402

PROG = "sca_decoder.py"
SHAPES = [(512, 14), (2048, 7)]
BATCHES = (1, 32, 128)
K, D, EMB, VOCAB = 512, 1000, 512, 10000
QUICK = [((512, 14), 32), ((2048, 7), 32)]
SMOKE = [((16, 3), 2)]
SMOKE_SIZES = dict(k=8, d=12, emb=6, vocab=20)
FIELDS = ["N", "C", "H", "W", "k", "d", "T", "vocab", "dtype", "layout", "mode", "impl", "ms", "ms_per_step",
          "x_eager", "x_compile", "peak_mb", "peak_x_eager", "check", "n_sets", "compile_s", "note"]


def fused_class():
    """The fused drop-in class, or None while attnkernels lacks it: the one place it is picked
    (attnkernels.SCA, of the SCA front end)."""
    import attnkernels as ak
    return getattr(ak, "SCA", None)


class CaptionDecoder(nn.Module):
    """The SCA-CNN decoder: an SCA block (any class with reference.SCA's constructor), a word
    embedding, an LSTM cell fed the word and the attended features' spatial mean, a vocabulary
    Linear."""

    def __init__(self, sca_cls, channels, k, d, emb, vocab):
        super().__init__()
        self.sca = sca_cls(channels, d, k, order="cs", scale=True)
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTMCell(emb + channels, d)
        self.logit = nn.Linear(d, vocab)
        self.d = d

    def step(self, V, words, h, c):
        X = self.sca(V, h)
        h, c = self.lstm(torch.cat([self.embed(words), X.mean((2, 3))], 1), (h, c))
        return self.logit(h), h, c

    def forward(self, V, words, step=None):
        """Logits (N, T, vocab) of T teacher-forced steps on words (N, T); `step` replaces
        self.step (its torch.compile)."""
        step = step or self.step
        h = V.new_zeros(V.shape[0], self.d)
        c = torch.zeros_like(h)
        out = []
        for t in range(words.shape[1]):
            logits, h, c = step(V, words[:, t], h, c)
            out.append(logits)
        return torch.stack(out, 1)


def make_decoders(C, sizes, dtype):
    """{impl: callable (V, words) -> logits} and the eager module (the parameters' owner):
    eager, its compiled step, and the fused decoder (same state_dict) or None."""
    from attnkernels import reference
    torch.manual_seed(C)
    eager = H.scale_params_(CaptionDecoder(reference.SCA, C, **sizes), seed=C).to(H.DEV, dtype)
    cls = fused_class()
    fused = None
    if cls is not None:
        fused = CaptionDecoder(cls, C, **sizes).to(H.DEV, dtype)
        fused.load_state_dict(eager.state_dict(), strict=True)
    return eager, fused


def _body(model, mode, step=None):
    params = [p for p in model.parameters() if p.requires_grad]
    if mode == "fwd":
        return lambda s: H.call_fwd(lambda V, w: model(V, w, step), s[0], s[1])

    def train(s):
        V, words, targets = s
        logits = model(V, words, step)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return torch.autograd.grad(loss, [V] + params)
    return train


def run_config(cfg, impls, modes, args, writer):
    (C, Hs), N, dt_name, lay = cfg
    sizes = SMOKE_SIZES if args.cpu_smoke else dict(k=K, d=D, emb=EMB, vocab=VOCAB)
    T = args.steps
    dtype, fmt = H.DTYPES[dt_name], H.LAYOUTS[lay]
    label = f"decoder N={N} C={C} {Hs}x{Hs} T={T} {dt_name} {lay}"
    H.log(f"== {label}")
    eager, fused = make_decoders(C, sizes, dtype)
    for mode in modes:
        def make_set(g, mode=mode):
            V = H.randn((N, C, Hs, Hs), dtype, g, fmt, requires_grad=mode == "fwdbwd")
            words = torch.randint(0, sizes["vocab"], (N, T + 1), device=H.DEV, generator=g)
            return (V, words[:, :-1]) + ((words[:, 1:],) if mode == "fwdbwd" else ())

        vbytes = N * C * Hs * Hs * torch.empty(0, dtype=dtype).element_size()
        sets = H.make_sets(make_set, vbytes * (1 if mode == "fwd" else 2), label)
        if sets is None:
            continue

        def fp32():
            m32 = copy.deepcopy(eager).float()
            s32 = (sets[0][0].detach().float().requires_grad_(mode == "fwdbwd"),) + sets[0][1:]
            return _body(m32, mode)(s32)

        guard = H.Guard(dtype, "logits" if mode == "fwd" else "dV", fp32=fp32)
        rows = []
        for impl in impls:
            row = dict(N=N, C=C, H=Hs, W=Hs, k=sizes["k"], d=sizes["d"], T=T, vocab=sizes["vocab"],
                       dtype=dt_name, layout=lay, mode=mode, impl=impl, n_sets=len(sets))
            rows.append(row)
            backend, note, body = None, "", None
            if impl == "eager":
                body = _body(eager, mode)
            elif impl == "compile":
                note = H.compile_skip(args, mode) or ""
                if not note:
                    torch._dynamo.reset()
                    body = _body(eager, mode, step=torch.compile(eager.step, dynamic=False))
            elif fused is None:
                body, note = None, "the op's front end is not in attnkernels yet"
            else:
                body, backend = _body(fused, mode), H.kernel_backend(impl)
            if body is None or note:
                res = H.Result(note=note)
            else:
                res = H.measure(body, sets, args, label=f"{label} {mode} {impl}", compiled=impl == "compile",
                                guard=guard.baseline if impl == "eager" else guard, backend=backend)
            row.update(ms=res.ms, ms_per_step=res.ms / T, peak_mb=res.peak_mb, compile_s=res.compile_s,
                       check=res.check, note=res.note)
        H.speedups(rows)
        H.ratios(rows, "peak_x_eager", "peak_mb", "eager", lambda peak, base: peak / base)
        for row in rows:
            writer(row)
            H.log(f"   {mode:7s} {row['impl']:8s} {H.fmt_num(row['ms'], 3):>9s} ms  "
                  f"{H.fmt_num(row['ms_per_step'], 4):>9s} ms/step  x{H.fmt_num(row['x_eager'], 2)} vs eager  "
                  f"peak {H.fmt_num(row['peak_mb'], 1)} MB  {row['check']} {row['note']}")
        del sets
    H.empty_cache()


def _key(r):
    return (r["N"], r["C"], r["H"], r["T"], r["dtype"], r["layout"], r["mode"])


def markdown(rows, impls, meta):
    return H.report_markdown(
        "SCA-CNN decoder", rows, impls, meta,
        "ms: T teacher-forced steps; ms/step = ms / T; fwd = inference (no_grad), fwdbwd = training "
        "(loss backward to V and the parameters). (No byte model: GB/s and % copy are n/a.)",
        ["N×C×H×W", "T", "dtype", "layout", "mode"], _key,
        lambda k: [f"{k[0]}×{k[1]}×{k[2]}×{k[2]}", k[3], k[4], k[5], k[6]],
        extra_cols=[("ms/step", lambda r: H.fmt_num(r["ms_per_step"], 4))], ms_field="ms_per_step",
        ms_label="ms/step")


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_preset_args(p, "both feature shapes at batch 32, bf16, NCHW")
    p.add_argument("--steps", type=int, default=16, help="decoder steps T (default 16)")
    H.add_common_args(p, ("eager", "compile", "triton", "cuda"), "sca-decoder")
    H.add_compile_args(p)
    return p


def parse_args(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.cpu_smoke and args.steps == 16:
        args.steps = 2
    if not args.layouts:  # features come out of a CNN in NCHW unless it runs channels_last
        args.layouts = "nchw"
    return args


def main(argv=None):
    args = parse_args(argv)
    return H.run_benchmark(
        args, PROG, "sca-decoder", baselines=["eager"], op="sca", fields=FIELDS,
        configs=lambda: H.grid_configs(args, SHAPES, BATCHES, QUICK, PROG, std_batches=BATCHES, smoke=SMOKE),
        run_config=lambda cfg, impls, modes, gbps, w: run_config(cfg, impls, modes, args, w),
        markdown=markdown, fused_missing=lambda: fused_class() is None)


if __name__ == "__main__":
    sys.exit(main())
