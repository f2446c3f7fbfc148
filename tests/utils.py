"""Helpers shared by the test files: fresh random inputs, the low-precision error bar, the
scripts that must run without the Triton interpreter, and builds done once per pytest run."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import zlib

import torch

LOW = (torch.float16, torch.bfloat16)


def rand(shape, dtype, device, gen, scale=1.0):
    """Fresh random normal values (never zeros), made in fp64 then cast."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def case_generator(*key):
    """A CPU generator seeded from the test case's key: the same inputs on every run."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randomize_(module, g, scale=0.5):
    """Random weights and BN affine (normal * scale), running stats (var > 0) and
    num_batches_tracked, so parity tests never compare default-initialized modules."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.3)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(int(torch.randint(0, 100, (), generator=g)))
    return module


def assert_same_state(a, b, rtol=1e-11, atol=1e-12):
    """Same state_dict keys, in the same order, and values."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=rtol, atol=atol, msg=k)


def sm90_code_here(device):
    """The CUDA build has sm_90 code for the device (cuda-emu on the CPU reports 90): clusters and
    the pipelined kernels run there only (csrc/se/launch.h: clusters_ok, pipelined_ok). Read from
    the device's capability: setup.py builds for the present GPU's own arch."""
    device = torch.device(device)
    return device.type == "cpu" or torch.cuda.get_device_capability(device)[0] >= 9


def cuda_devices():
    """The devices attnkernels.cuda's kernels run on here: "cpu" (the cuda-emu build) and "cuda"
    (the nvcc build, with a GPU); the calling test module is skipped when there is neither."""
    import pytest
    cuda_mod = pytest.importorskip("attnkernels.cuda")
    devices = []
    if cuda_mod.unavailable_reason("cuda-emu") is None:
        devices.append("cpu")
    if cuda_mod.unavailable_reason("cuda") is None and torch.cuda.is_available():
        devices.append("cuda")
    if not devices:
        pytest.skip(f"no cuda/cuda-emu extension: {cuda_mod.unavailable_reason('cuda-emu')}", allow_module_level=True)
    return devices


def to64(t):
    return None if t is None else t.detach().to(torch.float64)


def assert_matches(out, ref_lowp, ref64, name="output", factor=2.0):
    """The standard of DEVELOPERS.md: the kernel's error against an fp64 reference is at most
    `factor` x the error of the reference computed in the same precision (plus a tiny eps).
    fp64 outputs must match the fp64 reference to ~1e-10 relative."""
    assert out is not None and out.shape == ref64.shape, f"{name}: shape {None if out is None else tuple(out.shape)} vs {tuple(ref64.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (an unwritten element?)"
    out64 = out.detach().to(torch.float64).cpu()
    ref64 = ref64.detach().to(torch.float64).cpu()
    scale = ref64.abs().max().item() if ref64.numel() else 0.0
    err = (out64 - ref64).abs().max().item() if ref64.numel() else 0.0
    if out.dtype == torch.float64:
        assert err <= 1e-10 * (1.0 + scale), f"{name}: fp64 error {err:.3e} (scale {scale:.3e})"
        return
    ref_err = (ref_lowp.detach().to(torch.float64).cpu() - ref64).abs().max().item() if ref64.numel() else 0.0
    eps = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}[out.dtype] * (1.0 + scale)
    assert err <= factor * ref_err + eps, (
        f"{name} ({out.dtype}): error {err:.3e} > {factor} x reference error {ref_err:.3e} + {eps:.1e}")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_without_interpreter(script, timeout=600):
    """Run a test file's script part in a subprocess without TRITON_INTERPRET (Triton compiles
    for a GPU target there) and return the JSON object its last stdout line holds; exit status
    3 is a skip, with the reason on the last line."""
    import pytest
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode == 3:
        pytest.skip(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def once_per_run(tmp_path_factory, name, compute):
    """compute(shared_dir) -> a JSON-able result, run once per pytest run even under
    pytest-xdist, whose workers are processes that each set up their own module and session
    fixtures (gpu-check runs `-n 8`: the nvcc, g++ and AOT Triton builds of a file would run on
    every worker that draws one of its tests). The first worker computes under a file lock in
    the run's shared temp dir and stores the result; the others wait and read it.
    `--dist loadgroup` would do this by marks, but with pytest 9.2 (seen here, xdist 3.8) they
    are silently ignored (pytest-xdist issue 1386). A compute() that raises stores nothing, so
    each worker fails (or skips) on its own. Returns (result, shared dir): outputs that must
    outlive the call go in that dir."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    shared = root / f"once-{name}"
    shared.mkdir(exist_ok=True)
    result_file = shared / "result.json"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if result_file.exists():
            return json.loads(result_file.read_text()), shared
        result = compute(shared)
        tmp = shared / "result.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(result_file)
        return json.loads(result_file.read_text()), shared


# aten ops that allocate, view or reinterpret without reading or writing the elements: they may
# touch a feature-map-sized tensor in a fused op (its outputs are allocated, its inputs viewed)
_NON_COMPUTE_ATEN = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "as_strided", "view",
    "_unsafe_view", "alias", "detach", "t", "transpose", "permute", "expand", "slice", "select",
    "unsqueeze", "squeeze", "_reshape_alias", "lift_fresh", "set_", "resize_", "is_same_size",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_contiguous", "_to_copy_meta",
}


def full_size_aten_ops(fn, min_numel):
    """The aten compute ops (op name, shapes) that read or write a tensor of at least min_numel
    elements while fn() runs, recorded by a TorchDispatchMode (which also sees the aten calls the
    C++ extension makes): the fused check of DEVELOPERS.md, where min_numel is the feature map's
    size. Allocations and views are not compute (_NON_COMPUTE_ATEN); a copy (.contiguous(), .to())
    is. The Triton interpreter's own copies of a launch's arguments (to its host buffers and back:
    no GPU launch makes them) are not recorded. Returns (fn's result, the list)."""
    import contextlib
    import threading

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    seen = []
    in_launch = threading.local()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ns, name = func.namespace, func._schema.name.split("::")[-1]
            if ns == "aten" and name not in _NON_COMPUTE_ATEN and not getattr(in_launch, "on", False):
                tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
                if any(t.numel() >= min_numel for t in tensors):
                    seen.append((f"{ns}::{name}", [tuple(t.shape) for t in tensors]))
            return out

    launch_scope = contextlib.nullcontext()
    if os.environ.get("TRITON_INTERPRET") == "1":
        from triton.runtime import interpreter
        from triton_interpreter import _patched
        run_grid = interpreter.GridExecutor.__call__

        def call(self, *args, **kwargs):
            in_launch.on = True
            try:
                return run_grid(self, *args, **kwargs)
            finally:
                in_launch.on = False
        launch_scope = _patched(interpreter.GridExecutor, __call__=call)
    with launch_scope, Recorder():
        result = fn()
    return result, seen


def onnx_export_and_run(m, args, path, dynamo, others=(), input_names=("x",), reference=None):
    """Exports m at args (a tensor, or a tuple of them named input_names) with a dynamic batch (dim 0
    of every input and of the output), with either exporter (dynamo: the torch.export-based one),
    runs the file in onnxruntime (CPU) on args and on each of `others` (inputs of the same form,
    another batch), and checks the outputs against m's eager outputs (or those of `reference`, a
    module computing the same function more cheaply: the unconverted model). Skips without onnx and
    onnxruntime (and onnxscript for the torch.export-based exporter): dev requirements, not
    dependencies of the package. Returns the exported graph's nodes as (domain, op_type) pairs."""
    import pytest
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    args = args if isinstance(args, tuple) else (args,)
    batch = {0: "N"}
    torch.onnx.export(m, args, str(path), dynamo=dynamo, input_names=list(input_names), output_names=["y"],
                      dynamic_axes={**{name: batch for name in input_names}, "y": batch})
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inputs in (args, *others):
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        (got,) = sess.run(None, {name: t.detach().cpu().numpy() for name, t in zip(input_names, inputs)})
        with torch.no_grad():
            want = (m if reference is None else reference)(*inputs).cpu()
        assert got.shape == tuple(want.shape)
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)
    return {(n.domain, n.op_type) for n in model.graph.node}


def assert_load_and_run_without_attnkernels(tmp_path, cases):
    """cases: {name: (a TorchScript module (scripted or traced), its inputs (a tuple), its outputs)}.
    Saves each with torch.jit.save, then loads and runs it in a process that never imports
    attnkernels (deployment without the package) and checks the outputs."""
    io = {}
    for name, (module, inputs, outputs) in cases.items():
        torch.jit.save(module, str(tmp_path / f"{name}.pt"))
        io[name] = (inputs, outputs)
    torch.save(io, str(tmp_path / "io.pt"))
    script = (
        "import sys, torch\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "for name, (xs, y) in io.items():\n"
        f"    m = torch.jit.load({str(tmp_path)!r} + '/' + name + '.pt')\n"
        "    torch.testing.assert_close(m(*xs), y, rtol=1e-5, atol=1e-6)\n"
        "assert 'attnkernels' not in sys.modules\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path))
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout[-2000:] + out.stderr[-2000:]


def assert_same_under_checkpointing(real, ours, backend, x, use_reentrant, rtol=1e-5, atol=1e-5):
    """torch.utils.checkpoint around conv -> block -> tanh: the forward runs again during the
    backward. With the backend set for the process (a `with ak.backend(...)` scope must also cover
    the backward, or the recomputation runs another backend), ours gives the gradients of the
    input, the conv and its own parameters, and the state (a train-mode BatchNorm counts the
    recomputation too, in both), that `real` gives."""
    import attnkernels as ak
    C = x.shape[1]
    conv = torch.nn.Conv2d(C, C, 3, padding=1)
    randomize_(conv, torch.Generator().manual_seed(C))
    conv = conv.to(x.device, x.dtype)
    prev = ak.set_backend(backend)
    try:
        grads = []
        for m in (ours, real):
            xl = x.clone().requires_grad_()
            params = [xl, conv.weight, *m.parameters()]
            for p in params[1:]:
                p.grad = None
            y = torch.utils.checkpoint.checkpoint(lambda t: m(conv(t)).tanh(), xl, use_reentrant=use_reentrant)
            y.square().sum().backward()  # (reentrant checkpoints do not take autograd.grad)
            grads.append([p.grad.clone() for p in params])
    finally:
        ak.set_backend(prev)
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    assert_same_state(ours, real, rtol=rtol, atol=atol)
