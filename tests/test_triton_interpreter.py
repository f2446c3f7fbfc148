"""The interpreter hooks of triton_interpreter.py on small kernels of their own: the hooks are
what the SE tests' claims about program order, concurrency and memory rest on, so each must be
able to fail. (Under TRITON_INTERPRET=1 only: on a GPU the programs are the GPU's.)"""
import os
import threading

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the Triton interpreter's hooks (TRITON_INTERPRET=1)", allow_module_level=True)
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from triton_interpreter import interleaved_programs, interpreter_memcheck, shuffled_program_order  # noqa: E402


@triton.jit
def _publish_then_read(data_ptr, flag_ptr, out_ptr, SEM: tl.constexpr, WAIT: tl.constexpr,
                       WAIT_SEM: tl.constexpr):
    """Program 0 stores a value and raises a flag (atomic with semantics SEM); every other
    program (optionally waiting for the flag, with atomics of semantics WAIT_SEM) copies the
    value to out[pid]."""
    pid = tl.program_id(0)
    if pid == 0:
        tl.store(data_ptr, 42.0)
        tl.atomic_add(flag_ptr, 1, sem=SEM)
    else:
        if WAIT:
            r = tl.atomic_add(flag_ptr, 0, sem=WAIT_SEM)
            while r == 0:
                r = tl.atomic_add(flag_ptr, 0, sem=WAIT_SEM)
        tl.store(out_ptr + pid, tl.load(data_ptr))


@triton.jit
def _wait_forever(flag_ptr):
    r = tl.atomic_add(flag_ptr, 0, sem="acquire")
    while r == 0:
        r = tl.atomic_add(flag_ptr, 0, sem="acquire")


@triton.jit
def _own_id_after_atomics(counter_ptr, out_ptr, out2_ptr):
    """Each program writes its id before and after two atomics: the scheduler's switches there
    must hand every program back its own program_id."""
    pid = tl.program_id(0)
    tl.store(out_ptr + pid, pid)
    tl.atomic_add(counter_ptr, 1)
    tl.atomic_add(counter_ptr, 1)
    tl.store(out2_ptr + pid, pid)


@triton.jit
def _store_past_the_end(out_ptr, n):
    pid = tl.program_id(0)
    tl.atomic_add(out_ptr, 0)
    tl.store(out_ptr + n + pid, 1.0)  # one past the tensor's last element in program 0


def _run_publish(programs, sem, wait, wait_sem="acquire"):
    data, flag = torch.zeros(1), torch.zeros(1, dtype=torch.int32)
    out = torch.full((programs,), -1.0)
    _publish_then_read[(programs,)](data, flag, out, SEM=sem, WAIT=wait, WAIT_SEM=wait_sem)
    assert float(data) == 42.0 and int(flag) == 1, "memory after the launch is not what it stored"
    return out[1:]


def test_pid_order_hides_a_missing_wait_and_a_shuffle_shows_it():
    """Why the hooks exist: run one after another in pid order, program 0 always publishes before
    the others read, so a reader that does not wait still reads the value; in a shuffled order
    some reader comes first."""
    assert (_run_publish(4, "release", wait=False) == 42).all()
    for seed in range(10):
        with shuffled_program_order(seed):
            out = _run_publish(4, "release", wait=False)
        if (out != 42).any():
            return  # a shuffle put a reader first: the hook at least reorders
    pytest.fail("no program order left a reader without the value")


def test_interleaved_wait_for_a_release_always_sees_the_value():
    for seed in range(12):
        with interleaved_programs(seed) as sched:
            out = _run_publish(4, "release", wait=True)
        assert (out == 42).all(), (seed, out)
        assert sched["launches"] == 1 and sched["switches"] > 0


@pytest.mark.parametrize("sem, wait, wait_sem", [("release", False, "acquire"), ("relaxed", True, "acquire"),
                                                 ("release", True, "relaxed")],
                         ids=["reader-without-wait", "relaxed-publish", "relaxed-wait"])
def test_interleaved_shows_a_missing_wait_release_or_acquire(sem, wait, wait_sem):
    """A reader that does not wait, a publish whose atomic does not release the store before it
    (the store stays in program 0's buffer), or a wait whose atomics do not acquire (the reader's
    loads see memory as at its last acquire, here the launch's start) reads the stale 0 in some
    interleaving; memory itself ends up holding what was stored."""
    stale = 0
    for seed in range(24):
        with interleaved_programs(seed) as sched:
            zeros = int((_run_publish(4, sem, wait, wait_sem) == 0).sum())
        assert sched["stale"] <= zeros, "a load counted as stale read the value"
        stale += zeros
    assert stale > 0, "every reader saw the value: the interleaving (or the store buffer) has no effect"


@pytest.mark.parametrize("sem, wait_sem, buffer_stores, stale_loads",
                         [("relaxed", "acquire", False, True), ("release", "relaxed", True, False)],
                         ids=["no-store-buffer", "no-stale-loads"])
def test_interleaved_without_its_memory_model_misses_a_relaxed_publish_or_wait(sem, wait_sem, buffer_stores,
                                                                              stale_loads):
    """The store buffer is what shows a relaxed publish, and stale loads what shows a relaxed
    wait: without them memory is sequentially consistent, and the waiting readers always see
    the value."""
    for seed in range(24):
        with interleaved_programs(seed, buffer_stores=buffer_stores, stale_loads=stale_loads) as sched:
            assert (_run_publish(4, sem, wait=True, wait_sem=wait_sem) == 42).all()
        assert sched["stale"] == 0


def test_interleaved_restores_each_programs_id():
    for seed in range(4):
        out, out2 = torch.full((13,), -1, dtype=torch.int32), torch.full((13,), -1, dtype=torch.int32)
        counter = torch.zeros(1, dtype=torch.int32)
        with interleaved_programs(seed, resident=5) as sched:
            _own_id_after_atomics[(13,)](counter, out, out2)
        assert out.tolist() == list(range(13)) and out2.tolist() == list(range(13))
        assert int(counter) == 26 and sched["interleaved"] > 0


def test_interleaved_reports_a_deadlock_and_leaves_no_thread():
    before = threading.active_count()
    flag = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(Exception, match="without finishing"):
        with interleaved_programs(0, max_switches=300):
            _wait_forever[(3,)](flag)
    assert threading.active_count() == before, "programs of the failed launch still running"


def test_interleaved_passes_a_programs_error_on():
    """memcheck's error, raised inside one program (at the flush of its buffered store), fails the
    launch; the other programs are unwound."""
    before = threading.active_count()
    out = torch.zeros(6)
    with pytest.raises(Exception, match="outside every tensor"):
        with interpreter_memcheck(), interleaved_programs(1):
            _store_past_the_end[(4,)](out[:3], 3)
    assert threading.active_count() == before


def test_triton_schedule_variable_wraps_a_test_in_its_hook(monkeypatch):
    """TRITON_SCHEDULE (conftest.py; `make test-min` sets it) puts a test under the hook
    it names, seeded from the value and the test's name, with waits that wait (interleave); a
    value it does not know is a usage error, not a silent pass without the hook."""
    import pathlib
    import types

    import conftest
    import attnkernels.triton.se as tse

    node = types.SimpleNamespace(path=pathlib.Path("tests/test_se.py"), nodeid="tests/test_se.py::t")
    counter = torch.zeros(1, dtype=torch.int32)
    out, out2 = torch.full((6,), -1, dtype=torch.int32), torch.full((6,), -1, dtype=torch.int32)
    monkeypatch.setenv("TRITON_SCHEDULE", "interleave:3")
    with conftest._triton_schedule(node) as sched:
        assert tse._spin_cap(torch.device("cpu")) == 0
        _own_id_after_atomics[(6,)](counter, out, out2)
    assert sched["launches"] == 1 and sched["interleaved"] > 0
    assert tse._spin_cap(torch.device("cpu")) == 1, "the spin cap stayed patched after the test"
    monkeypatch.setenv("TRITON_SCHEDULE", "shuffle:3")
    with conftest._triton_schedule(node) as order:
        _own_id_after_atomics[(6,)](counter, out, out2)
    assert order["reordered"] == 1
    for bad in ("interleave", "random:3", "shuffle:x"):
        monkeypatch.setenv("TRITON_SCHEDULE", bad)
        with pytest.raises(pytest.UsageError, match="TRITON_SCHEDULE"):
            conftest._triton_schedule(node)
