"""Launching compiled Triton kernels without the JIT's dispatch on every call.

`kernel[grid](*args, **kwargs)` runs triton's JIT dispatch each time: it binds the arguments,
specializes each one (type, 16-byte alignment of pointers, integers == 1 or divisible by 16),
hashes a cache key and builds launch metadata, then calls the compiled kernel's launcher. With
a no-op driver on the 2-core dev machine (benchmarks/triton_dispatch.py) that is ~15-25 us per
launch of an SE kernel, against ~1 us to call the compiled kernel's launcher (whose C call into
the driver comes on top, both ways): at batch 1 it was most of a Triton SE call's host time (2
launches forward, 2-3 backward).

`launcher(kernel)[grid](*args, **kwargs)` takes the JIT's path the first time it sees a key,
keeps the compiled kernel the JIT returns, and afterwards calls its launcher directly, with the
very arguments the JIT would pass (tests/test_triton_launch.py checks that, launch by launch,
against the JIT, on triton 3.6 and the dev pin). The key is at least as fine as triton's
specialization, so an entry never serves arguments the JIT would have compiled differently:
  - positional tensors: (dtype, data_ptr % 16), triton specializes on (dtype, 16-byte aligned);
  - every other positional argument and every keyword (runtime ints, constexprs, num_warps):
    its value (triton: an int's width, == 1, % 16 == 0; a constexpr's value; the options);
  - the current device (the JIT launches there; the compiled module is loaded per device).
Whatever the key cannot vouch for goes through the JIT every time: a tensor passed by keyword,
an unhashable argument, a launch hook installed (proton and other profilers read the JIT's
launch metadata), and the interpreter (TRITON_INTERPRET=1: no compiled kernel to keep).
Triton knobs changed after a kernel's first launch (e.g. `knobs.runtime.debug`) are not seen
by that kernel's cached entries. ATTNKERNELS_TRITON_JIT_LAUNCH=1 (read at import) sends every
launch through the JIT, as before.
"""
from __future__ import annotations

import functools
import inspect
import os

import torch
import triton

try:  # triton >= 3.4
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older triton: no fast path
    _knobs = None

_JIT_ONLY = os.environ.get("ATTNKERNELS_TRITON_JIT_LAUNCH", "0") not in ("", "0")
_MAX_ENTRIES = 4096  # per kernel: one per distinct (shape, flags, alignment) seen; then start over


def _hook_active(hook) -> bool:
    # triton 3.6 leaves an unset hook None; 3.8 keeps an (empty) HookChain there
    return hook is not None and bool(getattr(hook, "calls", True))


class _Entry:
    __slots__ = ("run", "function", "packed_metadata", "tail")

    def __init__(self, compiled, tail):
        self.run = compiled.run  # (the JIT's launch has loaded the module on this device)
        self.function = compiled.function
        self.packed_metadata = compiled.packed_metadata
        self.tail = tail  # the values after the positional ones, in parameter order


class Launcher:
    """`launcher(kernel)[grid](*args, **kwargs)`: the call syntax of a JIT kernel (see the module
    docstring). Tensors must be passed positionally to take the fast path."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.entries: dict = {}
        # only a real JIT kernel (not the interpreter's, not a test double) has a launcher to keep
        self.enabled = (_knobs is not None and not _JIT_ONLY
                        and isinstance(kernel, triton.runtime.jit.JITFunction))
        if self.enabled:
            self.params = kernel.params

    def __getitem__(self, grid):
        return functools.partial(self.launch, grid)

    def launch(self, grid, *args, **kwargs):
        rt = _knobs.runtime if self.enabled else None
        if rt is None or _hook_active(rt.launch_enter_hook) or _hook_active(rt.launch_exit_hook):
            return self.kernel[grid](*args, **kwargs)
        driver = triton.runtime.driver.active
        device = driver.get_current_device()
        # values with their types: 1, 1.0 and True are equal keys but not one specialization.
        # One flat tuple built by a loop: ~40% less host time than a tuple of pairs (dev VM).
        key = [device]
        for a in args:
            if isinstance(a, torch.Tensor):
                key += (a.dtype, a.data_ptr() & 15)
            else:
                key += (type(a), a)
        key += kwargs.items()
        key += map(type, kwargs.values())
        key = tuple(key)
        try:
            entry = self.entries.get(key)
        except TypeError:  # an unhashable argument
            return self.kernel[grid](*args, **kwargs)
        if entry is None:
            return self._first_launch(key, grid, args, kwargs)
        n = len(grid)
        entry.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1,
                  driver.get_current_stream(device), entry.function, entry.packed_metadata,
                  None, None, None, *args, *entry.tail)

    def _first_launch(self, key, grid, args, kwargs):
        """The JIT's launch; keep its compiled kernel for this key unless the key can't vouch
        for the specialization (a tensor among the keywords: its key would be its identity)."""
        compiled = self.kernel[grid](*args, **kwargs)
        if not all(hasattr(compiled, a) for a in _Entry.__slots__[:3]):
            self.enabled = False  # a triton whose compiled kernels launch differently: the JIT
            return compiled
        if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            return compiled
        # equal keys have equal keywords, so the rest of the JIT's bound arguments is fixed
        tail = []
        for p in self.params[len(args):]:
            if p.name in kwargs:
                tail.append(kwargs[p.name])
            elif p.default is not inspect.Parameter.empty:
                tail.append(p.default)
            else:
                return compiled  # (the JIT would have raised)
        if len(self.entries) >= _MAX_ENTRIES:
            self.entries.clear()
        self.entries[key] = _Entry(compiled, tuple(tail))
        return compiled


_launchers: dict = {}


def launcher(kernel) -> Launcher:
    """The Launcher of `kernel` (one per kernel object, made on first use)."""
    entry = _launchers.get(id(kernel))
    if entry is None or entry.kernel is not kernel:
        entry = _launchers[id(kernel)] = Launcher(kernel)
    return entry


def on_x_device(launcher_fn):
    """Run the launcher with its first tensor's GPU current (x, or dy: on x's device): triton
    launches on the current device and its current stream (the JIT's rule, which this module's
    launcher keeps), and that need not be x's (a model on cuda:1 called without
    torch.cuda.set_device). For every op's launcher functions (attnkernels/triton/<op>.py)."""
    @functools.wraps(launcher_fn)
    def on_device(t, *args, **kwargs):
        if t.is_cuda and t.device.index != torch.cuda.current_device():
            with torch.cuda.device(t.device):
                return launcher_fn(t, *args, **kwargs)
        return launcher_fn(t, *args, **kwargs)
    return on_device
