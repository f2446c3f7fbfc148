"""The benchmarks stay runnable: bench_se.py's --cpu-smoke mode on the CPU (cuda-emu and, under
TRITON_INTERPRET=1, the Triton interpreter), with forced-variant columns, must write a CSV whose every kernel row ran
and matched eager (the bench's own correctness guard); so must bench_cbam.py, bench_bam.py, bench_sca.py and
sca_decoder.py on the backends that have their op; host_overhead.py runs."""
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


# the other ops' benchmarks: script -> (arguments narrowing --cpu-smoke to one layout and batch,
# the op, the attnkernels drop-in classes its kernel columns run)
OP_BENCHES = {
    "bench_cbam.py": (["--layouts", "cl", "--batches", "2"], "cbam", ("CbamModule", "CBAM")),
    "bench_bam.py": (["--layouts", "cl", "--batches", "2"], "bam", ("BAM",)),
    "bench_sca.py": (["--layouts", "cl", "--batches", "2", "--orders", "cs,s"], "sca", ("SCA",)),
    "sca_decoder.py": ([], "sca", ("SCA",)),
}


@pytest.mark.parametrize("script", list(OP_BENCHES))
def test_op_bench_cpu_smoke(script, tmp_path):
    """The CBAM / BAM / SCA benchmarks and the SCA-CNN decoder run on the CPU (--cpu-smoke: the
    reference, and the kernel backends that have the op: the Triton interpreter, cuda-emu) and
    write a CSV whose eager rows all ran, whose kernel columns are exactly the backends with the
    op's kernels, and whose every row that ran matched eager (the bench's own guard). A kernel
    column whose drop-in is not in attnkernels yet is a row with a note, not a failure."""
    import attnkernels as ak
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import harness
    finally:
        sys.path.pop(0)
    args, op, classes = OP_BENCHES[script]
    harness.set_device("cpu")
    kernels = {k for k in harness.KERNEL_IMPLS if harness.kernel_unavailable(k, op) is None}
    fused = all(hasattr(ak, c) for c in classes)
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", script), "--cpu-smoke", "--no-compile", "--no-plot",
           "--out", str(tmp_path), "--name", "smoke"] + args
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "smoke.csv")))
    assert rows and (tmp_path / "smoke.md").exists()
    assert {row["mode"] for row in rows} == {"fwd", "fwdbwd"}
    assert {row["impl"] for row in rows} - {"official"} == {"eager"} | kernels
    for row in rows:
        if row["impl"] in kernels and not fused:
            assert "not in attnkernels" in row["note"], row
            continue
        assert row["check"] in ("ref", "ok") and float(row["ms"]) > 0, row  # (a failure: ms NaN)
