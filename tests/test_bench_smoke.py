"""benchmarks/bench_se.py stays runnable: its --cpu-smoke mode on the CPU (cuda-emu and, under
TRITON_INTERPRET=1, the Triton interpreter), with forced-variant columns, must write a CSV whose every kernel row ran
and matched eager (the bench's own correctness guard)."""
import csv
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_se_cpu_smoke(tmp_path):
    import attnkernels as ak
    if "cuda-emu" not in ak.available_backends("cpu"):
        pytest.skip("needs the emulated build")
    triton = "triton" in ak.available_backends("cpu")  # (the interpreter: TRITON_INTERPRET=1)
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_se.py"), "--cpu-smoke", "--no-compile",
           "--no-plot", "--impls", "eager,cuda" + (",triton" if triton else ""),
           "--cuda-variants", "pipelined@1,fused,split,batched", "--triton-variants", "pipelined@1,batched",
           "--out", str(tmp_path), "--name", "smoke"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "smoke.csv")))
    impls = {row["impl"] for row in rows}
    expected = {"eager", "cuda", "cuda:pipelined@1", "cuda:fused", "cuda:split", "cuda:batched"}
    if triton:
        expected |= {"triton", "triton:pipelined@1", "triton:batched"}
    assert impls == expected, impls
    for row in rows:
        if row["impl"] == "eager":
            continue
        assert row["check"] == "ok" and float(row["ms"]) > 0, row
        forced = row["impl"].partition(":")[2].partition("@")[0]
        assert not forced or row["variant"] == forced, row
    assert {row["mode"] for row in rows} == {"fwd", "fwdbwd"}
    assert {row["suite"] for row in rows} == {"resnet50", "mbv3", "vovnet"}  # vovnet: ESE, single layer
    assert (tmp_path / "smoke.md").exists()


def test_host_overhead_runs(tmp_path):
    """benchmarks/host_overhead.py (in gpu-check) runs on the CPU (cuda-emu, launches not run)
    and writes a row per layer of the stack."""
    import attnkernels as ak
    if "cuda-emu" not in ak.available_backends("cpu"):
        pytest.skip("needs the emulated build")
    out = tmp_path / "host.csv"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "host_overhead.py"), "--calls", "90", "--csv", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(out)))
    paths = [row["path"] for row in rows]
    assert paths[:7] == ["raw ext se_forward", "ak.se no_grad", "module no_grad", "eager fwd no_grad",
                         "module fwd+bwd", "python autograd fwd+bwd", "eager fwd+bwd"], paths
    assert set(paths[7:]) <= {"triton module no_grad", "triton module fwd+bwd"}, paths  # (GPU only)
    import torch
    from attnkernels.cuda import unavailable_reason
    backend = "cuda" if torch.cuda.is_available() and unavailable_reason("cuda") is None else "cuda-emu"
    assert all(float(row["us_per_call"]) > 0 and row["backend"] == backend for row in rows)
