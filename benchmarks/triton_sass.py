#!/usr/bin/env python3
"""Read what the GPU will run without a GPU: compile one SE Triton kernel ahead of time for sm_90
(as tests/test_triton_compile.py does) and print its resource usage and, per loop of its SASS
(a backward branch), the instruction mix: barriers, global loads (LDG, cp.async LDGSTS), stores,
shared-memory traffic, shuffles, FMAs. That is how NOTES.md's "read from SASS" sections were
counted (e.g. the batched variant's layer products: 96-192 SHFL a row block with tl.sum, 0 with
tl.dot). Run without TRITON_INTERPRET:

    .venv/bin/python benchmarks/triton_sass.py rescale --layout nchw --group 8
    .venv/bin/python benchmarks/triton_sass.py weights --act gelu --dump /tmp/w.sass

Tiles default to what _plan_for picks at ResNet-50 stage 4 (128 x 2048 x 7 x 7, Cr 128).
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = ("squeeze", "rescale", "bwd_reduce", "bwd_dx", "weights")
COUNTS = (("BAR", r"\bBAR\b"), ("LDG", r"\bLDG\b"), ("LDGSTS", r"\bLDGSTS\b"), ("STG", r"\bSTG\b"),
          ("LDS", r"\bLDS\b"), ("STS", r"\bSTS\b"), ("SHFL", r"\bSHFL\b"), ("FFMA", r"\bFFMA\b"),
          ("FMUL", r"\bFMUL\b"), ("FADD", r"\bFADD\b"))


def kernel_and_constexprs(se, tl, args):
    if args.kernel == "weights":
        return se._se_bwd_weights, dict(ACT=args.act, ACC=tl.float32, BLOCK_A=32, BLOCK_B=16)
    nchw = args.layout == "nchw"
    tile = dict(BLOCK_C=32, BLOCK_HW=64, stride_hw=1) if nchw else dict(BLOCK_C=64, BLOCK_HW=32, stride_c=1)
    # BLOCK_R as _plan_for sizes it: weight blocks of 2048 elements, 1024 in the batched variant
    tile.update(BLOCK_R=args.block_r or ((2048 if args.group == 1 else 1024) // tile["BLOCK_C"]), GROUP=args.group,
                ACC=tl.float32)
    pool_max = args.pool == "avgmax"
    fn, flags = {
        "squeeze": (se._se_squeeze, dict(HAS_B1=True, POOL_MAX=pool_max, SPLIT=args.split, BLOCK_ROWS=8, FC1=True)),
        "rescale": (se._se_excite_rescale, dict(HAS_B2=True, ACT=args.act, GATE=args.gate)),
        "bwd_reduce": (se._se_bwd_reduce, dict(ACT=args.act, GATE=args.gate, POOL_MAX=pool_max, SPLIT=args.split,
                                               BLOCK_ROWS=8)),
        "bwd_dx": (se._se_bwd_dx, dict(POOL_MAX=pool_max, FC1=True)),
    }[args.kernel]
    return fn, {**tile, **flags}


def loops(sass):
    """(start, end, instructions) of each backward branch's range, innermost first."""
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
    out = []
    for addr, text in ins:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            lo = int(m.group(1), 16)
            out.append((lo, addr, [t for a, t in ins if lo <= a <= addr]))
    return sorted(out, key=lambda x: x[1] - x[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel", choices=KERNELS)
    ap.add_argument("--layout", choices=("nchw", "cl"), default="nchw")
    ap.add_argument("--group", type=int, default=1, help="GROUP: 1 split, > 1 batched")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--act", default="relu")
    ap.add_argument("--gate", default="sigmoid")
    ap.add_argument("--pool", default="avg", choices=("avg", "avgmax"))
    ap.add_argument("--split", action="store_true", help="SPLIT (HW splits) in the reductions")
    ap.add_argument("--block-r", type=int, default=0, help="BLOCK_R (default: as _plan_for sizes it)")
    ap.add_argument("--dump", default=None, help="also write the whole SASS here")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("run without TRITON_INTERPRET (the kernels must be compiled, not interpreted)")
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    import triton.language as tl
    from test_triton_compile import compile_kernel, cuobjdump_of, cuobjdump_path, resource_usage
    import attnkernels.triton.se as se
    cuobjdump = cuobjdump_path()
    if cuobjdump is None:
        sys.exit("no cuobjdump next to triton's ptxas")
    fn, constexprs = kernel_and_constexprs(se, tl, args)
    kernel = compile_kernel(fn, "*" + args.dtype, constexprs)
    regs, stack, local = resource_usage(kernel, cuobjdump)
    sass = cuobjdump_of(kernel, cuobjdump, "-sass")
    if args.dump:
        with open(args.dump, "w") as f:
            f.write(sass)
    print(f"{fn.__name__} {args.dtype} {args.layout} GROUP={args.group}: REG:{regs} STACK:{stack} LOCAL:{local}")
    for lo, hi, body in loops(sass):
        mix = " ".join(f"{name} {sum(1 for t in body if re.search(rx, t))}" for name, rx in COUNTS)
        print(f"  loop {lo:#06x}-{hi:#06x}: {len(body)} instructions; {mix}")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # piped into head
        sys.stderr.close()
