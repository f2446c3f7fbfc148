"""Tests of csrc/cuemu (CUDA kernels run on the CPU): builds csrc/cuemu/tests/*.cpp with g++ once
per session (plus a ucontext-fallback build and an nvcc compile check of csrc/common/cuda_compat.h
and the wmma calls, in parallel) and runs each case in a subprocess with a timeout, so a hang can
never stall pytest."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils import once_per_run

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
TESTS = CSRC / "cuemu" / "tests"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
CXX = os.environ.get("CXX", "g++")
# The flags every translation unit compiled against cuemu must use (see csrc/cuemu/README.md).
EMU_FLAGS = ["-std=c++17", "-O2", "-fno-strict-aliasing", "-fno-extern-tls-init", "-pthread"]
CASE_TIMEOUT = 30

if shutil.which(CXX) is None:
    pytest.skip(f"{CXX} not found: cannot build the cuemu self-test", allow_module_level=True)
if not (CUDA_HOME / "include" / "cuda_fp16.h").exists():
    pytest.skip(f"CUDA headers not found under {CUDA_HOME}/include", allow_module_level=True)


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    def build_once(out):
        common = EMU_FLAGS + ["-rdynamic", f"-I{CSRC}", f"-I{CUDA_HOME / 'include'}"]
        srcs = [str(TESTS / "cuemu_selftest.cpp"), str(TESTS / "cuemu_selftest_tu2.cpp")]
        jobs = {
            "asm": [CXX, *common, *srcs, "-o", str(out / "selftest")],
            # the fallback build also checks C++20 (torch 2.14 extensions compile with -std=c++20) and
            # -DNDEBUG (setuptools) with CUEMU_FORCE_ASSERT
            "ucontext": [CXX, *common, "-std=c++20", "-DNDEBUG", "-DCUEMU_FORCE_ASSERT", "-DCUEMU_USE_UCONTEXT",
                         *srcs, "-o", str(out / "selftest_uc")],
            "compat_emu": [CXX, "-x", "c++", *common, str(TESTS / "compat_check.cu"), "-o", str(out / "compat_emu")],
        }
        nvcc = CUDA_HOME / "bin" / "nvcc"
        if nvcc.exists():
            jobs["nvcc"] = [str(nvcc), "-std=c++17", "-arch=sm_90", f"-I{CSRC}", "-c",
                            str(TESTS / "compat_check.cu"), "-o", str(out / "compat_nvcc.o")]
        procs = {k: subprocess.Popen(v, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for k, v in jobs.items()}
        results = {}
        for k, p in procs.items():
            log, _ = p.communicate(timeout=300)
            results[k] = [p.returncode, log]
        return results

    # built once per run: xdist workers share the executables (utils.once_per_run)
    results, out = once_per_run(tmp_path_factory, "cuemu_selftest", build_once)
    rc, log = results["asm"]
    assert rc == 0, f"building the cuemu self-test failed:\n{log}"
    return {"dir": out, "results": results}


def run(builds, case, env=None, exe="selftest"):
    e = dict(os.environ)
    for k in ("CUEMU_SCHEDULE", "CUEMU_STRICT", "CUEMU_POISON_SHARED", "CUEMU_THREADS", "CUEMU_SPIN_TIMEOUT_S"):
        e.pop(k, None)
    e.update(env or {})
    p = subprocess.run([str(builds["dir"] / exe), case], env=e, capture_output=True, text=True,
                       timeout=CASE_TIMEOUT)
    return p.returncode, p.stdout + p.stderr


def ok(builds, case, env=None, exe="selftest"):
    rc, out = run(builds, case, env, exe)
    assert rc == 0 and "PASS" in out, out
    return out


def raises(builds, case, *patterns, env=None):
    rc, out = run(builds, case, env)
    assert rc == 3 and "ERROR: cuemu:" in out, f"expected a cuemu error, got rc={rc}:\n{out}"
    for pat in patterns:
        assert re.search(pat, out), f"{pat!r} not in:\n{out}"
    return out


@pytest.mark.parametrize("case", ["block_reduce", "warp", "atomics", "dyn_smem", "sync_votes", "fp16",
                                  "multi_tu", "spin", "vec_ok", "launch_config", "wmma"])
def test_correct_kernels(builds, case):
    ok(builds, case)


@pytest.mark.parametrize("case", ["block_reduce", "warp", "sync_votes", "wmma"])
def test_random_schedule_keeps_correct_kernels_correct(builds, case):
    for seed in (1, 2):
        ok(builds, case, {"CUEMU_SCHEDULE": f"random:{seed}"})


def test_single_worker_thread(builds):
    ok(builds, "atomics", {"CUEMU_THREADS": "1"})
    ok(builds, "block_reduce", {"CUEMU_THREADS": "1"})


def test_inter_block_waits_in_ticket_order(builds):
    """A block may spin-wait on one that started earlier (ticket order): any worker count."""
    for threads in ("1", "2", "5"):
        ok(builds, "ticket_chain", {"CUEMU_THREADS": threads})
    ok(builds, "wait_later_block", {"CUEMU_THREADS": "2"})


def test_block_order(builds):
    """CUEMU_BLOCK_ORDER: the order workers take blocks in (with one worker, the order they run):
    blockIdx order by default, reversed, or a seeded permutation; waits in ticket order still
    progress under any of them."""
    def order(env):
        out = ok(builds, "block_order", {"CUEMU_THREADS": "1", **env})
        return [int(v) for v in out.split("PASS block_order")[1].split()]
    n = 37
    assert order({}) == order({"CUEMU_BLOCK_ORDER": "index"}) == list(range(n))
    assert order({"CUEMU_BLOCK_ORDER": "reverse"}) == list(range(n))[::-1]
    r1, r2 = order({"CUEMU_BLOCK_ORDER": "random:1"}), order({"CUEMU_BLOCK_ORDER": "random:2"})
    assert sorted(r1) == sorted(r2) == list(range(n))
    assert r1 != list(range(n)) and r1 != r2 and order({"CUEMU_BLOCK_ORDER": "random:1"}) == r1
    for env in ({"CUEMU_BLOCK_ORDER": "reverse"}, {"CUEMU_BLOCK_ORDER": "random:3"}):
        for threads in ("1", "3"):
            ok(builds, "ticket_chain", {"CUEMU_THREADS": threads, **env})
    raises(builds, "warp", "CUEMU_BLOCK_ORDER", env={"CUEMU_BLOCK_ORDER": "shuffle"})


def test_clusters(builds):
    """A cluster's blocks run at once: cluster_sync and DSMEM reads of a neighbour's dynamic
    shared memory work with any worker count."""
    for threads in ("1", "3"):
        ok(builds, "cluster_ring", {"CUEMU_THREADS": threads})
    ok(builds, "cluster_ring", {"CUEMU_SCHEDULE": "random:3"})


def test_cluster_errors(builds):
    raises(builds, "cluster_map_static", r"cluster_map: not an address in the block's dynamic shared memory")
    raises(builds, "cluster_divergent", r"cluster barrier: not every block of the cluster arrived",
           env={"CUEMU_SPIN_TIMEOUT_S": "0.5"})
    raises(builds, "cluster_bad_size", r"invalid cluster of 4 blocks")


def test_spin_wait_that_cannot_end_raises(builds):
    """One worker runs block 0 to completion before block 1 starts: its wait raises, no hang."""
    raises(builds, "wait_later_block", r"spin-wait still waiting", r"k_wait_later_block",
           env={"CUEMU_THREADS": "1", "CUEMU_SPIN_TIMEOUT_S": "0.5"})


def test_missing_barrier_exposed_by_random_schedule(builds):
    # round robin happens to produce the right answer (thread t-1 runs before t) ...
    ok(builds, "neighbor_missing_barrier")
    seeds = range(8)
    for s in seeds:  # ... the correct kernel passes under every seed ...
        ok(builds, "neighbor_ok", {"CUEMU_SCHEDULE": f"random:{s}"})
    wrong = [s for s in seeds
             if run(builds, "neighbor_missing_barrier", {"CUEMU_SCHEDULE": f"random:{s}"})[0] == 1]
    assert wrong, "no random seed exposed the missing __syncthreads"  # ... the buggy one does not


def test_random_schedule_is_deterministic(builds):
    a = run(builds, "neighbor_missing_barrier", {"CUEMU_SCHEDULE": "random:5"})
    b = run(builds, "neighbor_missing_barrier", {"CUEMU_SCHEDULE": "random:5"})
    assert a == b


def test_bad_schedule_env(builds):
    raises(builds, "warp", "CUEMU_SCHEDULE", env={"CUEMU_SCHEDULE": "fifo"})


def test_shuffle_source_lane_outside_mask(builds):
    raises(builds, "bad_shfl_src", r"source lane 20 .* not in the member mask 0x0000ffff", r"thread \(3,0,0\)")


def test_shuffle_with_exited_lane(builds):
    raises(builds, "bad_shfl_exited", r"exited", r"__shfl_down_sync")


def test_shuffle_caller_not_in_mask(builds):
    raises(builds, "bad_shfl_notself", r"not in its member mask")


def test_mismatched_collectives(builds):
    raises(builds, "mismatch", r"mismatched warp collectives", r"__ballot_sync", r"__shfl_xor_sync")


def test_divergent_barriers_deadlock(builds):
    raises(builds, "deadlock_barriers", r"deadlock", r"threads 0-63", r"threads 64-127")


def test_warp_collective_vs_barrier_deadlock(builds):
    raises(builds, "deadlock_warp", r"deadlock", r"__shfl_sync", r"__syncthreads")


@pytest.mark.parametrize("case, patterns", [
    ("wmma_lane_exits", [r"lane 5 exited while lane 0 waits for it in nvcuda::wmma::mma_sync"]),
    ("wmma_lane_at_barrier", [r"nvcuda::wmma::load_matrix_sync .* waits for lane 3 which is blocked in __syncthreads",
                              "deadlock"]),
    ("wmma_other_pointer", [r"load_matrix_sync: every lane of the warp must pass the same matrix: lane 7"]),
    ("wmma_misaligned", [r"load_matrix_sync: pointer 0x[0-9a-f]+ is not 256-bit \(32-byte\) aligned"]),
    ("wmma_bad_ldm", [r"ldm 12 must be a multiple of 8 elements"]),
    ("wmma_copies_differ", [r"mma_sync: lane 0's matrix_a fragment has x\[0\] != x\[8\]"]),
    ("wmma_mismatch", [r"mismatched warp collectives: .*store_matrix_sync .* waits in nvcuda::wmma::mma_sync"]),
    ("wmma_partial_warp", [r"load_matrix_sync: member mask 0xffffffff names lane 16 which does not exist"]),
])
def test_wmma_misuse_raises(builds, case, patterns):
    """The warp matrix operations are warp collectives with the GPU's requirements: a lane missing
    (exited, or at a barrier), a lane passing another matrix, a misaligned pointer or ldm, a
    partial warp, lanes calling different operations, and a fragment changed element by element
    against the unspecified mapping each raise a cuemu::Error naming the call."""
    raises(builds, case, *patterns, r"k_wmma_bad")


def test_partial_barrier_default_and_strict(builds):
    ok(builds, "partial_barrier")
    raises(builds, "partial_barrier", r"reached by 32 of 128 threads", r"CUEMU_STRICT", env={"CUEMU_STRICT": "1"})


def test_launch_config_errors(builds):
    out = ok(builds, "launch_config")
    assert "more than 1024 threads per block" in out
    assert "grid dimension limits" in out and "227 KB" in out


def test_exception_propagates_with_context(builds):
    raises(builds, "throw", r"boom from device code", r"k_throw", r"block \(5,0,0\) thread \(7,0,0\)")


def test_device_assert_raises(builds):
    raises(builds, "assert", r"device-side assertion", r"thread \(9,0,0\)")


def test_device_printf(builds):
    out = ok(builds, "printf")
    assert "hello from block 1 thread 3" in out


def test_misaligned_vector_load(builds):
    raises(builds, "vec_misaligned", r"misaligned 16-byte vector load")


def test_static_shared_poisoning(builds):
    # stale contents of the previous block by default; poisoned per block with CUEMU_POISON_SHARED=1
    rc, out = run(builds, "static_poison")
    assert rc == 1, out
    ok(builds, "static_poison", {"CUEMU_POISON_SHARED": "1"})


def test_performance(builds):
    out = ok(builds, "perf")
    ms = float(re.search(r"reduce_4M_grid1024x256_ms=([\d.]+)", out).group(1))
    sys.stdout.write(out)
    assert ms < 3000, out  # ~100 ms on one core; generous for loaded CI machines


@pytest.mark.parametrize("case", ["block_reduce", "warp", "deadlock_barriers", "throw", "dyn_smem", "assert", "wmma",
                                  "wmma_lane_exits"])
def test_ucontext_fallback(builds, case):
    rc, log = builds["results"]["ucontext"]
    assert rc == 0, log
    rc, out = run(builds, case, exe="selftest_uc")
    assert rc in (0, 3) and ("PASS" in out or "ERROR: cuemu:" in out), out
    assert (rc == 3) == (case in ("deadlock_barriers", "throw", "assert", "wmma_lane_exits")), out


def test_cuda_compat_emulated(builds):
    rc, log = builds["results"]["compat_emu"]
    assert rc == 0, log
    ok(builds, "", exe="compat_emu")


def test_cuda_compat_compiles_with_nvcc(builds):
    if "nvcc" not in builds["results"]:
        pytest.skip("nvcc not found")
    rc, log = builds["results"]["nvcc"]
    assert rc == 0, log
