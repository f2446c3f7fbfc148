"""The CBAM, BAM and SCA drop-ins as users deploy their models, with a kernel backend in force:
torch.jit.trace and torch.jit.script give the reference's eager ops (no kernel runs, none is
recorded in the graph) and the module's outputs; torch.onnx.export, with either exporter, writes
a file of plain ONNX ops that onnxruntime runs with the module's outputs, at the export's batch and
another (a dynamic batch); and a converted timm ResNet-18 with CBAM does all of that. (SE's drop-ins:
test_se_modules.py.) Exports are of modules in eval mode, as users export them."""
import contextlib
import copy
import sys
from unittest import mock

import pytest
import torch
from torch import nn

import attnkernels as ak
from attnkernels import reference
from conftest import DEVICE
from utils import assert_load_and_run_without_attnkernels, onnx_export_and_run, randomize_


def _cbam_inputs(n, hw=(5, 6)):
    return (torch.randn(n, 16, *hw),)


def _bam_inputs(n, hw=(5, 4)):
    return (torch.randn(n, 32, *hw),)


def _sca_inputs(n, hw=(3, 4)):
    return torch.randn(n, 8, *hw), torch.randn(n, 6)


# name: (op, the drop-in in a configuration the fused op runs, its inputs at batch n (and H, W))
DROP_INS = {
    "official_cbam": ("cbam", lambda: ak.CBAM(16, 4), _cbam_inputs),
    "timm_cbam": ("cbam", lambda: ak.CbamModule(16, act_layer=nn.SiLU), _cbam_inputs),
    "timm_light_cbam": ("cbam", lambda: ak.LightCbamModule(16, spatial_kernel_size=3), _cbam_inputs),
    "bam": ("bam", lambda: ak.BAM(32, 8), _bam_inputs),
    "sca": ("sca", lambda: ak.SCA(8, 6, 5, order="sc"), _sca_inputs),
}
INPUT_NAMES = {"cbam": ("x",), "bam": ("x",), "sca": ("V", "h")}


def _drop_in(name):
    """(op, the drop-in with random weights and BatchNorm statistics, in eval mode, fused, its inputs)."""
    op, make, inputs = DROP_INS[name]
    torch.manual_seed(0)
    m = randomize_(make(), torch.Generator().manual_seed(1)).to(DEVICE).eval()
    assert m.fused_options() is not None

    def on_device(*args, **kw):
        return tuple(t.to(DEVICE) for t in inputs(*args, **kw))
    return op, m, on_device


@contextlib.contextmanager
def _kernel_calls(op):
    """Counts the op's kernel calls: its custom ops' calls of the backend's forward / backward."""
    front_end = sys.modules[f"attnkernels.{op}"]
    with mock.patch.object(front_end, "get_impl", wraps=front_end.get_impl) as impl:
        yield impl


def _assert_fused_eager(op, m, backend, inputs):
    """m's eager outputs on inputs, fused: the kernels ran."""
    with ak.backend(backend), _kernel_calls(op) as calls, torch.no_grad():
        y = m(*inputs)
    assert calls.call_count > 0
    return y


def _node_kinds(block):
    """The kinds of a TorchScript graph's nodes, those in the blocks of its ifs and loops too."""
    kinds = set()
    for node in block.nodes():
        kinds.add(node.kind())
        for sub in node.blocks():
            kinds |= _node_kinds(sub)
    return kinds


def _aten_only(graph):
    """graph's node kinds, which include no attnkernels op."""
    kinds = _node_kinds(graph)
    assert not any(k.startswith("attnkernels::") for k in kinds), kinds
    return kinds


@pytest.mark.filterwarnings("ignore:.*torch.jit")
@pytest.mark.filterwarnings("error::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", list(DROP_INS))
def test_module_torch_jit_trace(kernel_backend, name):
    """torch.jit.trace (also the TorchScript-based ONNX exporter's tracer) records aten ops only:
    a kernel call would be traced as a constant. Under tracing the drop-ins run the reference's
    ops, so the trace computes the block for new inputs (another batch and map size), and their
    checks of the traced call warn of nothing (no TracerWarning)."""
    op, m, inputs = _drop_in(name)
    torch.manual_seed(2)
    with ak.backend(kernel_backend), _kernel_calls(op) as calls, torch.no_grad():
        traced = torch.jit.trace(m, inputs(2), check_trace=False)
    assert calls.call_count == 0
    assert "aten::mean" in _aten_only(traced.inlined_graph)
    for xs in (inputs(2), inputs(3, (6, 5))):
        torch.testing.assert_close(traced(*xs), _assert_fused_eager(op, m, kernel_backend, xs), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*torch.jit")
@pytest.mark.parametrize("name", list(DROP_INS))
def test_module_torch_jit_script(kernel_backend, name):
    """torch.jit.script compiles the eager forward of the block replaced (the fused path is
    torch.jit.unused): the scripted module runs the reference's ops, no kernel, with the fused
    module's outputs (SCA's attention maps too), and the module itself still runs fused."""
    op, m, inputs = _drop_in(name)
    scripted = torch.jit.script(m)
    assert "aten::mean" in _aten_only(scripted.inlined_graph)
    torch.manual_seed(2)
    xs = inputs(3, (4, 5))
    with ak.backend(kernel_backend), _kernel_calls(op) as calls, torch.no_grad():
        got = scripted(*xs)
        maps = scripted(*xs, True) if op == "sca" else None
    assert calls.call_count == 0
    torch.testing.assert_close(got, _assert_fused_eager(op, m, kernel_backend, xs), rtol=1e-5, atol=1e-5)
    if op == "sca":
        with ak.backend(kernel_backend), torch.no_grad():
            torch.testing.assert_close(maps, m(*xs, return_attention=True), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*torch.jit")
def test_reference_modules_script():
    """The reference modules the drop-ins replace script as they are (the drop-ins compile their
    forwards), every configuration: the official CBAM without its spatial gate and with the pools
    the kernels lack, timm's CBAM with another activation and gates, each SCA order. Scripted,
    they run the same ops: the module's outputs bit for bit with TorchScript's graph
    optimizations off (on, they may round differently), in train mode too (the BatchNorms'
    running statistics)."""
    modules = [reference.CBAM(16, 4, no_spatial=True), reference.CBAM(16, 4, ["avg", "lp", "lse", "max"]),
               reference.CbamModule(16, act_layer=nn.GELU, gate_layer="hard_sigmoid", mlp_bias=True),
               reference.LightCbamModule(16, spatial_kernel_size=3),
               *(reference.SCA(8, 6, 5, order=order, scale=True) for order in ("cs", "sc", "c", "s"))]
    g = torch.Generator().manual_seed(3)
    for m in modules:
        randomize_(m, g)
        inputs = _sca_inputs if isinstance(m, reference.SCA) else _cbam_inputs
        for train in (True, False):
            eager = copy.deepcopy(m).train(train)
            scripted = torch.jit.script(copy.deepcopy(m).train(train))
            xs = inputs(3)
            with torch.jit.optimized_execution(False):
                if isinstance(m, reference.SCA):  # (X, beta, alpha): a map the order lacks is None
                    got, want = scripted(*xs, True), eager(*xs, True)
                else:
                    got, want = (scripted(*xs),), (eager(*xs),)
            assert [t is None for t in got] == [t is None for t in want]
            assert all(a is None or torch.equal(a, b) for a, b in zip(got, want)), type(m).__name__
            for (key, a), b in zip(eager.state_dict().items(), scripted.state_dict().values()):
                assert torch.equal(a, b), key


@pytest.mark.filterwarnings("ignore:.*torch.jit")
def test_saved_script_and_trace_load_without_attnkernels(tmp_path):
    """Each drop-in scripted and traced, saved with torch.jit.save, loads and runs in a process that
    never imports attnkernels (deployment without the package), with the module's outputs."""
    cases = {}
    for name in DROP_INS:
        _, m, inputs = _drop_in(name)
        torch.manual_seed(2)
        m, xs2, xs = m.cpu(), *(tuple(t.cpu() for t in inputs(n)) for n in (2, 3))
        with torch.no_grad():
            y = m(*xs)
        cases[f"{name}_scripted"] = (torch.jit.script(m), xs, y)
        cases[f"{name}_traced"] = (torch.jit.trace(m, xs2, check_trace=False), xs, y)
    assert_load_and_run_without_attnkernels(tmp_path, cases)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("dynamo", [True, False], ids=["export", "tracer"])
@pytest.mark.parametrize("name", list(DROP_INS))
def test_module_onnx_export(kernel_backend, name, dynamo, tmp_path):
    """torch.onnx.export of each drop-in, with either exporter, with a kernel backend in force: the
    file holds plain ONNX ops (no attnkernels op: the front ends run the reference's ops under
    the exporter), and onnxruntime computes the fused module's outputs from it, at the export's
    batch and another."""
    op, m, inputs = _drop_in(name)
    torch.manual_seed(2)
    xs, xs3 = inputs(2), inputs(3)
    with ak.backend(kernel_backend):
        nodes = onnx_export_and_run(m, xs, tmp_path / f"{name}.onnx", dynamo, others=(xs3,),
                                    input_names=INPUT_NAMES[op])
    assert {domain for domain, _ in nodes} <= {"", "ai.onnx"}, nodes
    assert {"ReduceMean", "Mul"} <= {op_type for _, op_type in nodes}, nodes
    _assert_fused_eager(op, m, kernel_backend, xs3)


def _timm_resnet18_cbam():
    """(timm's ResNet-18 with CBAM in every block, with random weights and BatchNorm statistics, in
    eval mode; its converted copy, every CBAM fused)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    real = timm.create_model("resnet18", block_args=dict(attn_layer="cbam"), num_classes=10)
    randomize_(real, torch.Generator().manual_seed(4), scale=0.2)
    real = real.to(DEVICE).eval()
    ours = ak.convert(copy.deepcopy(real))
    assert sum(type(mod) is ak.CbamModule for mod in ours.modules()) == 8
    assert ak.convert_report(ours)["fused"] == 8
    return real, ours


@pytest.mark.filterwarnings("ignore")
def test_converted_timm_resnet_with_cbam_scripts_traces_and_exports(kernel_backend, tmp_path):
    """A converted timm ResNet-18 with CBAM (32x32 input: layer4's maps are 1x1) scripts, traces
    and exports with the TorchScript-based ONNX exporter, with a kernel backend in force and no
    kernel call: each gives the unconverted model's logits (which the converted model's fused
    forward equals: test_cbam_modules.py), onnxruntime's at another batch too."""
    real, ours = _timm_resnet18_cbam()
    g = torch.Generator().manual_seed(5)
    x, x3 = (torch.randn(shape, generator=g).to(DEVICE) for shape in ((2, 3, 32, 32), (3, 3, 32, 32)))
    with torch.no_grad():
        want = real(x)
    with ak.backend(kernel_backend), _kernel_calls("cbam") as calls, torch.no_grad():
        scripted = torch.jit.script(ours)
        torch.testing.assert_close(scripted(x), want, rtol=1e-4, atol=1e-5)
        traced = torch.jit.trace(ours, x3, check_trace=False)
        torch.testing.assert_close(traced(x), want, rtol=1e-4, atol=1e-5)
        onnx_export_and_run(ours, x, tmp_path / "resnet18_cbam.onnx", dynamo=False, others=(x3,), reference=real)
    assert calls.call_count == 0
    _aten_only(traced.inlined_graph)


@pytest.mark.filterwarnings("ignore")
def test_converted_timm_resnet_with_cbam_onnx_torch_export(tmp_path):
    """The same model through the torch.export-based ONNX exporter (dynamic batch), with the first
    kernel backend in force (the fallback under the exporter does not depend on which: the
    drop-ins' test_module_onnx_export runs each; a whole model costs ~10 s of CPU an exporter
    run)."""
    from conftest import KERNEL_BACKENDS
    if not KERNEL_BACKENDS:
        pytest.skip("no kernel backend")
    real, ours = _timm_resnet18_cbam()
    g = torch.Generator().manual_seed(5)
    x, x3 = (torch.randn(shape, generator=g).to(DEVICE) for shape in ((2, 3, 32, 32), (3, 3, 32, 32)))
    with ak.backend(KERNEL_BACKENDS[0]), _kernel_calls("cbam") as calls:
        nodes = onnx_export_and_run(ours, x, tmp_path / "resnet18_cbam.onnx", dynamo=True, others=(x3,),
                                    reference=real)
    assert calls.call_count == 0
    assert {domain for domain, _ in nodes} <= {"", "ai.onnx"}, nodes
