"""A wider random search than the suite's hypothesis fuzz (test_se.py::test_se_fuzz): many SE
cases of random shape, options, dtype, layout, variant and slice count, each run forward and
backward against the references with run_and_check's standard (poisoned outputs, the 2x error
bar; Triton under triton_interpreter.interpreter_memcheck, as in the suite). Not collected by
pytest: run it by hand after a kernel change, e.g.

    TRITON_INTERPRET=1 .venv/bin/python tests/random_search_se.py --backend cuda-emu --cases 30000
    TRITON_INTERPRET=1 .venv/bin/python tests/random_search_se.py --backend triton --cases 1500 \\
        --variants auto,pipelined --max-c 100 --max-hw 16
    TRITON_INTERPRET=1 .venv/bin/python tests/random_search_se.py --backend triton --cases 500 \\
        --variants split,batched --shuffle-programs      # grids in random program orders
    TRITON_INTERPRET=1 .venv/bin/python tests/random_search_se.py --backend triton --cases 500 \\
        --variants pipelined,split,batched --interleave  # each grid's programs run interleaved

Each failing case prints one line: its index, variant, (N, C, H, W, Cr), options and the first
line of the failure; the same --seed replays the same cases. Exit status 1 when any failed."""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # before attnkernels is imported (no GPU here)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import test_se as T  # noqa: E402
from triton_interpreter import interleaved_programs, interpreter_memcheck, shuffled_program_order  # noqa: E402
from attnkernels._variant import force_variant  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cuda-emu")
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="case i draws from random.Random(seed + i)")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16,fp64")
    ap.add_argument("--variants", default="auto", help="comma-separated: auto,split,fused,pipelined,batched")
    ap.add_argument("--max-n", type=int, default=4)
    ap.add_argument("--max-c", type=int, default=48)
    ap.add_argument("--max-hw", type=int, default=9, help="largest H and W")
    ap.add_argument("--max-cr", type=int, default=8)
    ap.add_argument("--shuffle-programs", action="store_true",
                    help="triton: each case's grids in a random program order "
                         "(triton_interpreter.shuffled_program_order)")
    ap.add_argument("--interleave", action="store_true",
                    help="triton: each grid's programs run interleaved (triton_interpreter.interleaved_programs: "
                         "waits really wait)")
    a = ap.parse_args(argv)
    if a.interleave and a.shuffle_programs:
        ap.error("--interleave already starts each grid's programs in a random order: drop --shuffle-programs")
    dtypes = [DTYPES[d] for d in a.dtypes.split(",")]
    variants = a.variants.split(",")
    combos = T.COMBOS + [("identity", "sigmoid", "avgmax")]
    fails = 0
    for i in range(a.cases):
        r = random.Random(a.seed + i)
        shape = (r.randint(1, a.max_n), r.randint(1, a.max_c), r.randint(1, a.max_hw), r.randint(1, a.max_hw),
                 r.randint(1, a.max_cr))
        combo, cl, bias = r.choice(combos), r.random() < 0.5, r.random() < 0.5
        dtype, single, seed = r.choice(dtypes), r.random() < 0.33, r.randint(0, 2**16)
        variant, bps, lag = r.choice(variants), r.choice([0, 0, 1, 2, 3, 7]), r.choice([0, 1, 2])
        try:
            case = T.make_case(shape, dtype, cl, bias, seed=seed, single_layer=single)
            order = (shuffled_program_order(seed) if a.shuffle_programs else
                     interleaved_programs(seed) if a.interleave else contextlib.nullcontext())
            memcheck = interpreter_memcheck() if a.backend == "triton" else contextlib.nullcontext()
            with order as sched, memcheck, force_variant(variant, bps=bps, lag=lag):
                T.run_and_check(a.backend, case, *combo, seed=seed + 1)
            if a.interleave and sched["stale"]:
                raise AssertionError(f"{sched['stale']} load(s) read data their program had not acquired")
        except Exception as e:  # noqa: BLE001 - report every kind of failure and go on
            fails += 1
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            print(f"FAIL {i} {variant} bps={bps} lag={lag} {shape} {combo} {'cl' if cl else 'nchw'} "
                  f"bias={bias} {dtype} single={single} seed={seed}: {first}", flush=True)
            if a.backend == "triton":  # a failed launch may leave its counters set: not the next case's failure
                from attnkernels.triton._common import arrival_counters
                arrival_counters(T.DEVICE, 1).zero_()
    print(f"{a.cases} cases on {a.backend}, {fails} failed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
