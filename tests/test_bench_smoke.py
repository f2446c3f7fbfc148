"""The benchmarks stay runnable: bench_se.py's --cpu-smoke mode on the CPU (cuda-emu and, under
TRITON_INTERPRET=1, the Triton interpreter), with forced-variant columns, must write a CSV whose every kernel row ran
and matched eager (the bench's own correctness guard); so must bench_cbam.py, bench_bam.py, bench_sca.py and
sca_decoder.py on the backends that have their op, with their ratio columns and Targets tables; host_overhead.py
runs; make bench's CPU demo checks the SCA-CNN decoder's logits (and reports a wrong one); the harness's targets,
its stop on SIGTERM and main.py's argument routing do what make gpu-check / make bench rely on."""
import csv
import importlib.util
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

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
# the op, the attnkernels drop-in classes its kernel columns run, its families, the issue its
# Targets table reads (None: no targets), its ratio columns)
OP_BENCHES = {
    "bench_cbam.py": (["--layouts", "cl", "--batches", "2"], "cbam", ("CbamModule", "CBAM"), {"timm", "official"},
                      "#22", ("x_eager", "x_compile", "peak_x_eager")),
    "bench_bam.py": (["--layouts", "cl", "--batches", "2"], "bam", ("BAM",), {"gate", "block"},
                     "#23", ("x_eager", "x_official", "x_compile", "peak_x_eager", "peak_x_official")),
    "bench_sca.py": (["--layouts", "cl", "--batches", "2", "--orders", "cs,s"], "sca", ("SCA",), {"sca"},
                     "#24", ("x_eager", "x_compile", "peak_x_eager", "saved_x_nhwk")),
    "sca_decoder.py": ([], "sca", ("SCA",), None, None, ("x_eager", "x_compile", "peak_x_eager")),
}


def _benchmarks_module(name):
    """benchmarks/<name>.py imported (benchmarks/ on sys.path for its own imports; main.py as
    "benchmarks_main", not to take the name "main")."""
    path = os.path.join(ROOT, "benchmarks")
    if path not in sys.path:
        sys.path.insert(0, path)
    key = "benchmarks_main" if name == "main" else name
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, os.path.join(path, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod
    spec.loader.exec_module(mod)
    return mod


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
    args, op, classes, families, issue, ratio_cols = OP_BENCHES[script]
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
    assert set(ratio_cols) <= set(rows[0]), rows[0].keys()
    if families is not None:
        assert {row["family"] for row in rows} == families
    md = (tmp_path / "smoke.md").read_text()
    if issue is not None:  # ahead of the detail: make gpu-check's report keeps what comes before it
        assert f"### Targets (issue {issue})" in md.split("### Detail")[0], md[:3000]
    for row in rows:  # speedups against the row's own family's eager: 1 there
        if row["impl"] == "eager":
            assert math.isclose(float(row["x_eager"]), 1.0), row
    for row in rows:
        if row["impl"] in kernels and not fused:
            assert "not in attnkernels" in row["note"], row
            continue
        assert row["check"] in ("ref", "ok") and float(row["ms"]) > 0, row  # (a failure: ms NaN)


def test_demo_decoder_checks_logits(monkeypatch):
    """make bench's CPU demo runs the SCA-CNN decoder with attnkernels.SCA on every kernel backend
    here against the decoder with the eager reference.SCA, and PASSes each; a fused decoder whose
    weights differ (a wrong result) is reported FAIL, and the demo fails."""
    import attnkernels as ak
    main = _benchmarks_module("main")
    sca_decoder = _benchmarks_module("sca_decoder")
    avail = ak.available_backends("cpu")
    rows = []
    assert main.demo_decoder(torch.device("cpu"), avail, rows)
    kernels = [b for b in ("triton", "cuda-emu") if b in avail]
    assert [r[1] for r in rows] == ["reference"] + kernels
    assert all(r[-1] == "PASS" for r in rows), rows

    make = sca_decoder.make_decoders

    def wrong(*args, **kwargs):
        eager, fused = make(*args, **kwargs)
        with torch.no_grad():
            fused.sca.spatial_in.weight[0, 0] += 0.5
        return eager, fused
    monkeypatch.setattr(sca_decoder, "make_decoders", wrong)
    rows = []
    assert not main.demo_decoder(torch.device("cpu"), [], rows)  # (the reference backend only)
    assert [r[-1] for r in rows] == ["FAIL"], rows


def test_targets_table():
    """harness.targets_markdown: each kernel column's value in the rows a target names, met or not
    (never met by a row whose output failed the guard), "-" where the target does not apply to the
    config, "n/a" where nothing was measured, and the count of configs met per column."""
    H = _benchmarks_module("harness")
    nan = float("nan")

    def row(N, mode, impl, x_eager, peak=nan, check="ok"):
        return dict(family="f", N=N, C=8, H=4, dtype="bf16", layout="cl", mode=mode, impl=impl, x_eager=x_eager,
                    peak_x_eager=peak, check=check)
    rows = [row(128, "fwd", "eager", 1.0), row(128, "fwd", "triton", 3.5), row(128, "fwd", "cuda", 2.0),
            row(128, "fwdbwd", "eager", 1.0, 1.0), row(128, "fwdbwd", "cuda", 2.0, 0.4),
            row(1, "fwd", "eager", 1.0), row(1, "fwd", "cuda", nan),
            row(64, "fwd", "eager", 1.0), row(64, "fwd", "cuda", 5.0, check="MISMATCH y max|diff|=1")]
    table = H.family_targets("issue #0", [
        H.Target("fwd ≥ 3", "fwd", "x_eager", ">=", 3.0, where=lambda r: r["N"] >= 32),
        H.Target("peak ≤ 0.5", "fwdbwd", "peak_x_eager", "<=", 0.5),
        H.Target("fwd ≥ 3 at N=1", "fwd", "x_eager", ">=", 3.0, where=lambda r: r["N"] == 1)])
    lines = H.targets_markdown(rows, table)
    assert lines[0] == "### Targets (issue #0)"
    assert "| 128×8×4×4 | bf16 | cl | triton 3.50 ✓ · cuda 2.00 ✗ | cuda 0.40 ✓ | - |" in lines, lines
    assert "| 1×8×4×4 | bf16 | cl | - | - | n/a |" in lines, lines
    assert "| 64×8×4×4 | bf16 | cl | cuda 5.00 ✗ (MISMATCH) | - | - |" in lines, lines  # (a wrong output)
    assert "| fwd ≥ 3 | triton 1 of 1, cuda 0 of 2 |" in lines, lines
    assert "| fwd ≥ 3 at N=1 | not measured |" in lines, lines


def test_stop_on_sigterm_keeps_the_rows(tmp_path):
    """SIGTERM (make gpu-check's step timeout) inside harness.stop_on_sigterm stops run_configs
    after the rows written so far, notes it in meta, and is ignored after hold() (the report is
    being written)."""
    import threading
    if threading.current_thread() is not threading.main_thread():  # (the signal would end the process)
        pytest.skip("signal handlers are the main thread's")
    H = _benchmarks_module("harness")
    ran = []

    def run_one(cfg, writer):
        ran.append(cfg)
        writer(dict(cfg=cfg))
        if cfg == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # (the handler runs at the next bytecode boundaries)
                sum(range(1000))
            writer(dict(cfg="never"))
    meta = {}
    with H.stop_on_sigterm() as hold:
        rows = H.run_configs([0, 1, 2], run_one, str(tmp_path / "t"), ["cfg"], None, meta, "test")
        hold()
        os.kill(os.getpid(), signal.SIGTERM)  # ignored now
    assert ran == [0, 1] and [r["cfg"] for r in rows] == [0, 1]
    assert meta["stopped"] == 143 and "stopped by SIGTERM during config 2 of 3" in meta["truncated"]
    assert list(csv.DictReader(open(tmp_path / "t.csv"))) == [{"cfg": "0"}, {"cfg": "1"}]


def test_compile_limits():
    """--compile-modes / --compile-configs (make gpu-check compiles the forward only): the reason
    the torch.compile column is skipped, or None where it runs."""
    H = _benchmarks_module("harness")
    bench_cbam = _benchmarks_module("bench_cbam")
    args = bench_cbam.parse_args(["--compile-modes", "fwd", "--compile-configs", "1"])
    H.CONFIG_INDEX = 0
    assert H.compile_skip(args) is None and H.compile_skip(args, "fwd") is None
    assert "--compile-modes" in H.compile_skip(args, "fwdbwd")
    H.CONFIG_INDEX = 1
    assert "--compile-configs" in H.compile_skip(args, "fwd")
    H.CONFIG_INDEX = 0
    assert H.compile_skip(bench_cbam.parse_args(["--no-compile"]), "fwd") == "--no-compile"


def test_make_bench_routes_arguments():
    """main.py on a GPU passes each benchmark the arguments it takes (bench_se.py's own options
    reach only it) and gives each its own --name."""
    main = _benchmarks_module("main")
    bench_cbam = _benchmarks_module("bench_cbam")
    keep, dropped = main.args_for(bench_cbam.parser(), ["--quick", "--suites", "resnet50", "--dtypes", "fp32",
                                                        "--name=run", "--cuda-variants", "split", "--no-plot",
                                                        "--out", "/tmp/x"], "cbam")
    assert keep == ["--quick", "--dtypes", "fp32", "--name=run-cbam", "--no-plot", "--out", "/tmp/x"]
    assert dropped == ["--suites", "resnet50", "--cuda-variants", "split"]
    keep, _ = main.args_for(bench_cbam.parser(), ["--name", "run"], "cbam")
    assert keep == ["--name", "run-cbam"]


def test_make_bench_runs_each_benchmark(tmp_path, capsys):
    """main.py's GPU path (bench_all), here with --cpu-smoke (eager columns only: the kernel columns
    are test_op_bench_cpu_smoke's): each selected benchmark runs with the arguments it takes and
    its own --name, and the closing summary repeats each one's Targets."""
    main = _benchmarks_module("main")
    rc = main.bench_all(["--ops", "sca,decoder", "--cpu-smoke", "--no-compile", "--no-plot", "--batches", "2",
                         "--layouts", "cl", "--impls", "eager", "--out", str(tmp_path), "--name", "mb"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    for op in ("sca", "decoder"):
        assert (tmp_path / f"mb-{op}.csv").exists() and (tmp_path / f"mb-{op}.md").exists()
    summary = out.split("==== make bench: results")[1]
    assert "bench_sca.py: exit 0" in summary and "sca_decoder.py: exit 0" in summary
    assert "### Targets (issue #24)" in summary
