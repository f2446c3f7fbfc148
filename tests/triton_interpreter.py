"""The Triton interpreter, made to show what a GPU would: hooks on triton.runtime.interpreter that
run a grid's programs in a random order (shuffled_program_order), concurrently with stores held
back until a release and loads that see only what was acquired (interleaved_programs), and with
every memory access checked against the launch's tensors (interpreter_memcheck; conftest.py
turns it on for every test under TRITON_INTERPRET=1). Each hook restores what it replaced, so
they nest."""
from __future__ import annotations

import contextlib
import copy
import ctypes
import inspect
import itertools
import random
import threading

import torch


@contextlib.contextmanager
def _patched(obj, **attrs):
    """Set attributes of obj (an instance's shadow its class's methods) and put back whatever was
    there before, so the interpreter hooks below nest."""
    saved = {k: obj.__dict__[k] for k in attrs if k in obj.__dict__}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k in attrs:
            if k in saved:
                setattr(obj, k, saved[k])
            else:
                delattr(obj, k)


@contextlib.contextmanager
def shuffled_program_order(seed):
    """Run every grid the Triton interpreter launches in a random order of its programs.

    The interpreter runs a grid's programs one after another in pid order, so the last program
    of a group of arrivals (a split reduction's, a sample's channel blocks') is always the one
    with the largest pid there; on a GPU any of them may be last, and the last one must find
    everything the others parked. Here the interpreter's i-th program runs as pid perm[i], perm
    a random permutation drawn per grid and axis from `seed`. (Programs still run one at a
    time: what this cannot show is two of them interleaving.) Yields a dict whose "reordered"
    counts the grids that ran in an order other than pid order (0: the hook was not reached)."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    rng = random.Random(seed)
    perms = [[0], [0], [0]]
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx  # (bound: hooks nest)
    stats = {"reordered": 0}

    def set_grid_dim(nx, ny, nz):
        perms[:] = [rng.sample(range(n), n) for n in (nx, ny, nz)]
        stats["reordered"] += any(p != sorted(p) for p in perms)
        return set_dim(nx, ny, nz)

    def set_grid_idx(x, y, z):
        return set_idx(perms[0][x], perms[1][y], perms[2][z])

    with _patched(builder, set_grid_dim=set_grid_dim, set_grid_idx=set_grid_idx):
        yield stats


def _active_addresses(ptrs, mask):
    """The addresses of an interpreter load / store / atomic's active lanes (uint64, flat)."""
    import numpy as np
    addr = np.asarray(ptrs.data, dtype=np.uint64).ravel()
    if mask is not None:
        addr = addr[np.broadcast_to(np.asarray(mask.data, dtype=bool), np.shape(ptrs.data)).ravel()]
    return addr


def _element_bytes(ptrs):
    import numpy as np
    return np.uint64(max(1, ptrs.get_element_ty().primitive_bitwidth // 8))


def _memory(lo, hi):
    """The bytes [lo, hi) of host memory as a writable uint8 array (nothing is read until indexed)."""
    import numpy as np
    return np.frombuffer((ctypes.c_uint8 * int(hi - lo)).from_address(int(lo)), dtype=np.uint8)


def _byte_addresses(addr, nbytes):
    import numpy as np
    return (addr[:, None] + np.arange(int(nbytes), dtype=np.uint64)[None, :]).ravel()


class _Aborted(BaseException):
    """Unwinds a paused program of a launch that failed (BaseException: no kernel code's
    `except Exception` stops it)."""


class _Program:
    """One program of an interleaved launch, on a thread of its own that runs only while it holds
    the baton: `go` hands it over, the launch's `back` returns it (at a switch point or the end)."""

    def __init__(self, idx, fn, args, back, builder, local, log):
        self.idx, self.back, self.builder, self.local = idx, back, builder, local
        self.go = threading.Semaphore(0)
        self.done, self.error, self.abort = False, None, False
        self.buffered = []  # stores not yet visible to the other programs: (lo, hi, addresses, bytes, store)
        # The launch's made-visible stores, in order: (program, lo, hi, byte addresses, old bytes,
        # new bytes), or None without stale loads. Entries from `synced` on are the ones this
        # program has not acquired: its plain loads may read them as they were before.
        self.log, self.synced, self.stale = log, 0, 0
        self.thread = threading.Thread(target=self._main, args=(fn, args), daemon=True)

    def _main(self, fn, args):
        self.local.program = self
        try:
            self._resume()
            fn(**args)
            self.flush()  # a program's end makes its stores visible
        except _Aborted:
            pass
        except BaseException as e:  # reported by the scheduler, on the launching thread
            self.error = e
        finally:
            self.done = True
            self.back.release()

    def _resume(self):
        self.go.acquire()
        if self.abort:
            raise _Aborted()
        self.builder.grid_idx = self.idx  # (the interpreter's one global program index)

    def pause(self):
        self.back.release()
        self._resume()

    def flush(self):
        """Make the buffered stores visible, in program order (and log what each overwrote)."""
        stores, self.buffered = self.buffered, []
        for lo, hi, addr, nbytes, store in stores:
            if self.log is None:
                store()
                continue
            where = _byte_addresses(addr, nbytes)
            mem = _memory(lo, hi)
            old = mem[where - lo].copy()
            store()
            self.log.append((self, lo, hi, where, old, mem[where - lo].copy()))

    def load_as_seen(self, addr, nbytes, load):
        """Run `load` (of addr, nbytes each) on the memory as this program may see it: the stores
        logged since its last acquire undone, newest first, but for its own. Memory is put back
        after (the other programs are paused: one program runs at a time)."""
        import numpy as np
        if self.log is None or addr.size == 0 or len(self.log) == self.synced:
            return load()
        lo, hi = addr.min(), addr.max() + nbytes
        unseen = [e for e in self.log[self.synced:] if e[1] < hi and lo < e[2]]
        if all(e[0] is self for e in unseen):
            return load()
        where = _byte_addresses(addr, nbytes)
        mem = _memory(lo, hi)
        saved = mem[where - lo].copy()
        try:
            for _, _, _, at, old, _ in reversed(unseen):
                hit = np.isin(at, where)
                mem[at[hit] - lo] = old[hit]
            for writer, _, _, at, _, new in unseen:  # its own stores it sees
                if writer is self:
                    hit = np.isin(at, where)
                    mem[at[hit] - lo] = new[hit]
            self.stale += bool((mem[where - lo] != saved).any())
            return load()
        finally:
            mem[where - lo] = saved

    def has_buffered(self, addr, nbytes):
        """Do any buffered stores overlap the accesses at `addr` (uint64) of nbytes each?"""
        import numpy as np
        if addr.size == 0 or not self.buffered:
            return False
        lo, hi = addr.min(), addr.max() + nbytes
        return any(b_lo < hi and lo < b_hi and (b_bytes != nbytes or np.isin(addr, b_addr).any())
                   for b_lo, b_hi, b_addr, b_bytes, _ in self.buffered)


@contextlib.contextmanager
def interleaved_programs(seed, resident=4, max_switches=200_000, buffer_stores=True, stale_loads=True):
    """Run the Triton interpreter's programs concurrently, as a GPU does, instead of one after
    another.

    Every launch runs its programs on threads of their own, `resident` at a time (a new one starts
    when one ends, in a random order of the grid), and a seeded scheduler hands one of them the
    baton at every switch point: a program's start and just before and after each of its atomics.
    So a program can stop between its ticket and its publish while others run, and a spin-wait
    really waits for another program (the SE kernels' `_wait_ready` too: attnkernels.triton.se's
    `_spin_cap`, which gives up after one retry under the interpreter, is 0 meanwhile). Between
    two switch points a program runs alone.

    buffer_stores: a program's plain stores stay invisible to the other programs until it makes
    an atomic with release semantics (sem "release" or "acq_rel", Triton's default) or ends, as
    the GPU's memory model allows; the program itself sees them (a load or atomic that overlaps
    them makes them visible first: a legal order too). So a publish with sem="relaxed" lets a
    waiting program read stale data here.

    stale_loads (with buffer_stores): a program's plain loads see memory as it was at the launch's
    start or at the program's last atomic with acquire semantics ("acquire" or "acq_rel"), plus
    its own stores: what the other programs made visible since, it has not acquired, and reads
    as it was before (the oldest value the memory model allows; atomics read the newest). So a
    wait or an arrival with sem="relaxed" or "release" reads stale data too.

    A launch that makes `max_switches` switches without finishing is reported as a deadlock.
    Yields a dict: "launches", "switches", "interleaved" (switches that paused a program mid-way
    for another), "buffered" (stores delayed past a switch point), "stale" (loads that read a
    value older than memory held)."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    executor = interpreter.GridExecutor
    for obj, name in ((interpreter, "_patch_lang"), (interpreter, "_implicit_cvt"), (interpreter, "_ir"),
                      (interpreter, "InterpreterError"), (executor, "_init_args_hst"), (executor, "_restore_args_dev")):
        if not hasattr(obj, name):  # the launch below mirrors GridExecutor.__call__ of triton 3.6-3.8
            raise RuntimeError(f"interleaved_programs: this triton's interpreter has no {name}")
    rng = random.Random(seed)
    local = threading.local()
    stats = {"launches": 0, "switches": 0, "interleaved": 0, "buffered": 0, "stale": 0}
    releasing = {interpreter._ir.MEM_SEMANTIC.RELEASE, interpreter._ir.MEM_SEMANTIC.ACQUIRE_RELEASE}
    acquiring = {interpreter._ir.MEM_SEMANTIC.ACQUIRE, interpreter._ir.MEM_SEMANTIC.ACQUIRE_RELEASE}

    def run_grid(fn, args, grid):
        pending = list(itertools.product(*(range(n) for n in grid)))
        rng.shuffle(pending)
        back = threading.Semaphore(0)
        live, prev, switches = [], None, 0
        log = [] if buffer_stores and stale_loads else None
        try:
            while pending or live:
                while pending and len(live) < resident:
                    p = _Program(pending.pop(), fn, args, back, builder, local, log)
                    p.thread.start()
                    live.append(p)
                p = rng.choice(live)
                stats["interleaved"] += prev is not None and p is not prev and not prev.done
                p.go.release()
                back.acquire()
                prev = p
                switches += 1
                if p.done:
                    live.remove(p)
                    stats["stale"] += p.stale
                    p.thread.join()
                    if p.error is not None:
                        raise p.error
                elif switches > max_switches:
                    raise RuntimeError(f"{getattr(fn, '__name__', '?')}: {len(live)} resident program(s) made "
                                       f"{max_switches} switches without finishing (a deadlock?)")
        finally:
            stats["switches"] += switches
            for p in live:  # a failed launch: unwind the paused programs
                p.abort = True
                p.go.release()
                back.acquire()
                p.thread.join()

    def call(self, *args_dev, **kwargs):  # GridExecutor.__call__ with the program loop replaced
        argspec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in argspec.args}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        for hook in self.pre_run_hooks:
            hook(*args_hst, **kwargs_hst)
        patch_scope = interpreter._patch_lang(self.fn)
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {k: v if k in self.constexprs else interpreter._implicit_cvt(v) for k, v in args.items()}
            grid = self.grid(args) if callable(self.grid) else self.grid
            grid = tuple(grid) + (1,) * (3 - len(grid))
            builder.set_grid_dim(*grid)
            stats["launches"] += 1
            try:
                run_grid(self.fn, args, grid)
            except Exception as e:
                raise interpreter.InterpreterError(repr(e)) from e
        finally:
            patch_scope.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    def switch_point(program):
        if program is not None:
            stats["buffered"] += len(program.buffered)
            program.pause()

    def before_access(program, addr, nbytes):  # the program's own buffered stores are visible to it
        if program is not None and program.has_buffered(addr, nbytes):
            program.flush()

    prev_load, prev_store = builder.create_masked_load, builder.create_masked_store  # (bound: hooks nest)
    prev_rmw, prev_cas = builder.create_atomic_rmw, builder.create_atomic_cas

    def load(ptrs, mask, *args):
        program = getattr(local, "program", None)
        if program is None:
            return prev_load(ptrs, mask, *args)
        addr, nbytes = _active_addresses(ptrs, mask), _element_bytes(ptrs)
        before_access(program, addr, nbytes)
        return program.load_as_seen(addr, nbytes, lambda: prev_load(ptrs, mask, *args))

    def store(ptrs, value, mask, *args):
        program = getattr(local, "program", None)
        if program is None or not buffer_stores:
            return prev_store(ptrs, value, mask, *args)
        addr = _active_addresses(ptrs, mask)
        if addr.size:
            value = copy.copy(value)
            value.data = value.data.copy()  # (the store happens later: its own copy of the values)
            program.buffered.append((addr.min(), addr.max() + _element_bytes(ptrs), addr, _element_bytes(ptrs),
                                     lambda: prev_store(ptrs, value, mask, *args)))

    def atomic(prev, ptr, mask, sem, args):
        program = getattr(local, "program", None)
        switch_point(program)
        if program is not None and sem in releasing:
            program.flush()  # release: the program's earlier stores become visible first
        if program is not None:
            before_access(program, _active_addresses(ptr, mask), _element_bytes(ptr))
        out = prev(*args)
        if program is not None and program.log is not None and sem in acquiring:
            program.synced = len(program.log)  # what was made visible so far, it now sees
        switch_point(program)
        return out

    def atomic_rmw(op, ptr, val, mask, sem, scope):
        return atomic(prev_rmw, ptr, mask, sem, (op, ptr, val, mask, sem, scope))

    def atomic_cas(ptr, cmp, val, sem, scope):
        return atomic(prev_cas, ptr, None, sem, (ptr, cmp, val, sem, scope))

    import attnkernels.triton.se as tse
    with _patched(executor, __call__=call), _patched(tse, _spin_cap=lambda device: 0), \
            _patched(builder, create_masked_load=load, create_masked_store=store, create_atomic_rmw=atomic_rmw,
                     create_atomic_cas=atomic_cas):
        yield stats


@contextlib.contextmanager
def interpreter_memcheck():
    """compute-sanitizer's memcheck for the Triton interpreter: every load, store and atomic a
    kernel makes (its active lanes) must fall inside one of that launch's tensor arguments
    (the elements the tensor spans, not its whole storage). The interpreter dereferences raw
    addresses unchecked, so a wrong mask reads or corrupts neighbouring memory silently on the
    CPU; on a GPU memcheck would flag it, in a session the tests here never reach. Raises
    AssertionError naming the kernel at the first access outside."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    executor = interpreter.GridExecutor
    launch = {"name": "?", "spans": []}

    def span(t):
        t = getattr(t, "base", t) if not isinstance(t, torch.Tensor) else t  # triton's TensorWrapper
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return None
        lo = t.data_ptr() + t.element_size() * sum(min(0, (n - 1) * st) for n, st in zip(t.shape, t.stride()))
        hi = t.data_ptr() + t.element_size() * (1 + sum(max(0, (n - 1) * st) for n, st in zip(t.shape, t.stride())))
        return lo, hi

    init_args = executor._init_args_hst
    prev_load, prev_store = builder.create_masked_load, builder.create_masked_store  # (bound: hooks nest)
    prev_rmw, prev_cas = builder.create_atomic_rmw, builder.create_atomic_cas

    def init_args_checked(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        spans = {sp for sp in map(span, list(args_hst) + list(kwargs_hst.values())) if sp is not None}
        launch["name"] = getattr(self.fn, "__name__", "?")
        launch["spans"] = [(np.uint64(lo), np.uint64(hi)) for lo, hi in spans]
        return args_hst, kwargs_hst

    def check(kind, ptrs, mask):
        addr = _active_addresses(ptrs, mask)
        if addr.size == 0:
            return
        end = addr + _element_bytes(ptrs)
        ok = np.zeros(addr.shape, dtype=bool)
        for lo, hi in launch["spans"]:  # (they may overlap: a tensor passed twice, as a stand-in)
            ok |= (addr >= lo) & (end <= hi)
        if not ok.all():
            bad = addr[~ok]
            raise AssertionError(f"{launch['name']}: {kind} of {bad.size} element(s) outside every tensor "
                                 f"argument of the launch (first at address {int(bad[0]):#x})")

    def load(ptrs, mask, *args):
        check("load", ptrs, mask)
        return prev_load(ptrs, mask, *args)

    def store(ptrs, value, mask, *args):
        check("store", ptrs, mask)
        return prev_store(ptrs, value, mask, *args)

    def atomic_rmw(op, ptr, val, mask, *args):
        check("atomic", ptr, mask)
        return prev_rmw(op, ptr, val, mask, *args)

    def atomic_cas(ptr, cmp, val, *args):
        check("atomic", ptr, None)
        return prev_cas(ptr, cmp, val, *args)

    with _patched(executor, _init_args_hst=init_args_checked), \
            _patched(builder, create_masked_load=load, create_masked_store=store, create_atomic_rmw=atomic_rmw,
                     create_atomic_cas=atomic_cas):
        yield
