"""What the front end of every fused op (se.py, cbam.py, bam.py, sca.py) shares.

An op's front end validates its inputs once (naming the argument), picks where it runs with
`pick_backend`, and calls its custom op (`attnkernels::<op>_forward`), whose autograd calls
`attnkernels::<op>_backward`; both dispatch to the backend module's `<op>_forward` /
`<op>_backward` (attnkernels.backend.get_impl). Where the kernels cannot run, the reference's
eager ops run instead (`pick_backend` returns "reference"):
  - torch.func (grad, vmap, jacrev, ...): neither autograd Functions nor custom ops run under
    its transforms;
  - forward-mode AD (torch.autograd.forward_ad's dual levels): the ops have no jvp;
  - torch.jit.trace (and torch.onnx.export's tracer): it records aten ops only, so a kernel call
    would be traced as a constant; a trace of aten ops also runs, and exports, without
    attnkernels;
  - torch.onnx.export's default exporter (torch.export-based): no ONNX function for the ops;
  - empty inputs, and the "reference" backend (the default on CPU tensors).
A backward with create_graph=True (a double backward) differentiates the reference's eager graph
recomputed from the saved inputs (`grads_with_graph`): the kernels' backward is not
differentiable.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

from ._alloc import acc_dtype
from .backend import resolve


def reference_only() -> bool:
    """True under torch.func transforms, forward-mode AD and torch.jit tracing (see the module
    docstring): the op must run the reference's eager ops."""
    return (torch._C._are_functorch_transforms_active() or torch.jit.is_tracing()
            or _forward_ad._current_level >= 0)


@contextlib.contextmanager
def tracer_quiet():
    """Input checks compare shapes, which torch.jit's tracer warns would be constants: they are
    checks of the traced call, so no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def pick_backend(backend: Optional[str], x: Tensor) -> str:
    """The concrete backend an op call runs: "reference" where the kernels cannot run (module
    docstring), else the kernel backend (triton, cuda, cuda-emu). A requested backend that cannot
    run on x's device is an error even where the reference runs."""
    name = resolve(backend, x.device)
    if name == "reference" or reference_only() or x.numel() == 0:
        return "reference"
    if torch.compiler.is_compiling() and torch.onnx.is_in_onnx_export():
        return "reference"
    return name


def wants_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd will record a call on these inputs."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# torch's hardsigmoid_backward slope, 1.0f / 6.0f in every dtype (float64 too); the kernels use it
HARDSIGMOID_SLOPE = float(torch.tensor(1.0 / 6.0, dtype=torch.float32))


def hardsigmoid_twice_differentiable(z: Tensor) -> Tensor:
    """F.hardsigmoid's values and its gradient (torch's slope strictly inside (-3, 3), else 0)
    from ops that have a double backward, which F.hardsigmoid's backward lacks: the slope, a
    constant, multiplies z - z.detach(), zero in value (and kept zero where z is not finite)."""
    zd = z.detach()
    delta = torch.where(torch.isfinite(zd), z - zd, torch.zeros_like(zd))
    return torch.nn.functional.hardsigmoid(zd) + delta * (((zd > -3) & (zd < 3)).to(z.dtype) * HARDSIGMOID_SLOPE)


def twice_differentiable_gate(gate: str):
    """The gate by name, as a function with a double backward (hardsigmoid rebuilt, above)."""
    return hardsigmoid_twice_differentiable if gate == "hardsigmoid" else gate


def grads_with_graph(fn: Callable, inputs: Sequence[Optional[Tensor]], dy) -> tuple:
    """The gradients of fn(*inputs) (None for an input that is None or wants no gradient) as a
    differentiable function of the inputs and dy: what a backward with create_graph=True needs.
    fn runs the reference's eager graph in the accumulation dtype (fp32 for fp16/bf16, as the
    kernels accumulate), on the saved inputs cast to it: eager speed and memory, for this rare
    path only. Floating inputs are cast; others (and None) pass as they are. dy: the gradient of
    fn's output, or a tuple of gradients of fn's outputs (a tuple too; None: that output gets no
    gradient, e.g. an attention map the caller did not use)."""
    wanted = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    out = [None] * len(inputs)
    multi = isinstance(dy, (tuple, list))
    dys = list(dy) if multi else [dy]
    if not wanted or all(g is None for g in dys):
        return tuple(out)
    acc = acc_dtype(next(g for g in dys if g is not None).dtype)
    up = [t.to(acc) if isinstance(t, Tensor) and t.is_floating_point() else t for t in inputs]
    with torch.enable_grad():
        y = fn(*up)
        pairs = [(o, g.to(acc)) for o, g in zip(y if multi else [y], dys) if g is not None and o is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                    create_graph=True, allow_unused=True)
    for i, g in zip(wanted, grads):
        out[i] = g
    return tuple(out)
