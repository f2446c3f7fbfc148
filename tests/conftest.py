"""Test set-up: without a GPU, Triton kernels run under the interpreter on CPU tensors (the
variable must be set before attnkernels.triton is imported)."""
import contextlib
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# fp32 references must be fp32: cuDNN convolutions (the 1x1 convs of torchvision/timm SE blocks)
# default to TF32 on GPUs, ~1e-4 relative error, which the parity tests' 1e-5 would flag.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

import pytest  # noqa: E402

import attnkernels  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNEL_BACKENDS = [b for b in attnkernels.available_backends(DEVICE) if b != "reference"]
# ATTNKERNELS_TEST_BACKENDS=triton[,cuda-emu,...]: the kernel backends the op suites run on (default:
# every one available here). `make test-min` runs its interleaved Triton schedule on the Triton
# backend only: the backend-level files (test_*_cuda_emu.py) still run the emulated CUDA kernels
# there, and `make test` runs every backend in full.
if os.environ.get("ATTNKERNELS_TEST_BACKENDS"):
    _wanted = os.environ["ATTNKERNELS_TEST_BACKENDS"].split(",")
    KERNEL_BACKENDS = [b for b in KERNEL_BACKENDS if b in _wanted]


def pytest_report_header(config):
    return f"attnkernels: device={DEVICE}, kernel backends={KERNEL_BACKENDS}"


@pytest.fixture(params=KERNEL_BACKENDS or [pytest.param(None, marks=pytest.mark.skip("no kernel backend"))])
def kernel_backend(request):
    return request.param


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _triton_interpreter_checks(request):
    """Under the Triton interpreter every test runs with triton_interpreter.interpreter_memcheck:
    a kernel's load, store or atomic outside its launch's tensors fails the test (on a GPU,
    gpu-check's compute-sanitizer step does that job). TRITON_SCHEDULE=interleave:<seed> (or
    shuffle:<seed>) also runs every launch of every test with its programs interleaved (in a
    shuffled order), as CUEMU_SCHEDULE=random:<seed> does cuda-emu's threads (`make test-min`,
    in CI, sets interleave:1); each test draws its own seed from <seed> and its name.
    Interleaved, a load that reads data its program has not acquired fails the test."""
    if os.environ.get("TRITON_INTERPRET") == "1" and "triton" in KERNEL_BACKENDS:
        from triton_interpreter import interpreter_memcheck
        with interpreter_memcheck(), _triton_schedule(request.node) as sched:
            yield
        if sched and sched.get("stale"):  # (interleave) a race, even one the results did not show
            pytest.fail(f"{sched['stale']} load(s) of a Triton kernel read data their program had not acquired")
    else:
        yield


def _triton_schedule(test):
    spec = os.environ.get("TRITON_SCHEDULE", "")
    if not spec or test.path.name == "test_triton_interpreter.py":  # (the hooks' own tests
        # set the schedule each of them is about)
        return contextlib.nullcontext()
    import zlib
    from triton_interpreter import interleaved_programs, shuffled_program_order
    kind, _, seed = spec.partition(":")
    if kind not in ("interleave", "shuffle") or not seed.isdigit():
        raise pytest.UsageError(f"TRITON_SCHEDULE={spec!r}: expected interleave:<seed> or shuffle:<seed>")
    seed = int(seed) ^ zlib.crc32(test.nodeid.encode())
    return shuffled_program_order(seed) if kind == "shuffle" else interleaved_programs(seed)


# Files that never touch the GPU: the cuemu self-test and the nvcc / AOT-Triton builds (CI runs
# the AOT-Triton ones on the GPU machine's stack too: `make test-min`), and test_reference_* (CPU
# parity).
HOST_ONLY_FILES = ("test_cuemu.py", "test_cuda_build.py", "test_triton_compile.py", "test_triton_launch.py")

# The drop-in and model files test the module layer (constructors, state_dicts, convert(),
# BatchNorm bookkeeping, tracing and export), whose way into an op is the same on every backend;
# the op suites (test_<op>.py) run every backend in full. Without a GPU (the interpreter and the
# emulation are slow) each case of these files runs on one kernel backend: a test's cases are
# dealt to the backends in turn, in an order shuffled by a hash of their parameters (the order of
# collection would hand e.g. every train-mode case to one backend), and a test of one case takes
# the next backend after the previous such test's. On a GPU, or with
# ATTNKERNELS_TEST_EVERY_BACKEND=1, every case runs on every backend.
TAKE_TURNS_FILES = ("test_se_modules.py", "test_cbam_modules.py", "test_bam_modules.py", "test_convert.py",
                    "test_export.py")


def _turn_key(it):
    """(file, test) and the case's parameters but the backend, for an item of TAKE_TURNS_FILES
    parametrized over the kernel backends; else None."""
    params = getattr(getattr(it, "callspec", None), "params", {})
    if it.path.name not in TAKE_TURNS_FILES or params.get("kernel_backend") not in KERNEL_BACKENDS:
        return None
    # (parameter indices, not values: a value's repr may hold an address, which differs between
    # xdist workers, and they must all deselect the same items)
    case = tuple(sorted((k, i) for k, i in it.callspec.indices.items() if k != "kernel_backend"))
    return (it.path.name, getattr(it, "originalname", it.name)), case


def _backends_take_turns(config, items):
    if DEVICE.type == "cuda" or len(KERNEL_BACKENDS) < 2 or os.environ.get("ATTNKERNELS_TEST_EVERY_BACKEND") == "1":
        return
    import zlib
    cases = {}  # test -> its cases, in collection order
    for it in items:
        key = _turn_key(it)
        if key:
            cases.setdefault(key[0], {}).setdefault(key[1], None)
    turn = {}
    for i, (test, cs) in enumerate(cases.items()):
        for j, case in enumerate(sorted(cs, key=lambda c: zlib.crc32(repr(c).encode()))):
            turn[test, case] = KERNEL_BACKENDS[(i + j) % len(KERNEL_BACKENDS)]
    keep, dropped = [], []
    for it in items:
        key = _turn_key(it)
        (dropped if key and it.callspec.params["kernel_backend"] != turn[key] else keep).append(it)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_collection_modifyitems(config, items):
    _backends_take_turns(config, items)
    # On a GPU, the tests that run kernels on it first (stable order otherwise), so that a run cut
    # short by gpu-check's time budget has covered them; every xdist worker sorts the same way.
    if DEVICE.type == "cuda":
        items.sort(key=lambda it: it.path.name in HOST_ONLY_FILES or it.path.name.startswith("test_reference_"))
