"""Backend selection API: set_backend / backend() / available_backends / auto resolution."""
import threading

import pytest
import torch

import attnkernels as ak
from attnkernels.backend import resolve


def test_set_backend_returns_previous_and_validates():
    prev = ak.set_backend("reference")
    try:
        assert ak.get_backend() == "reference"
        assert ak.set_backend("auto") == "reference"
        with pytest.raises(ValueError, match="backend must be one of"):
            ak.set_backend("tpu")
    finally:
        ak.set_backend(prev)


def test_backend_context_scopes_and_nests():
    base = ak.get_backend()
    with ak.backend("reference"):
        assert ak.get_backend() == "reference"
        with ak.backend("auto"):
            assert ak.get_backend() == "auto"
        assert ak.get_backend() == "reference"
    assert ak.get_backend() == base
    with pytest.raises(ValueError):
        with ak.backend("nope"):
            pass


def test_backend_context_is_per_thread():
    seen = []
    with ak.backend("reference"):
        t = threading.Thread(target=lambda: seen.append(ak.get_backend()))
        t.start()
        t.join()
    assert seen == [ak.get_backend()]


def test_available_backends_lists_reference_and_is_consistent():
    names = ak.available_backends()
    assert "reference" in names
    assert set(names) <= {"reference", "triton", "cuda", "cuda-emu"}
    for name in ak.available_backends("cpu"):
        assert resolve(name, torch.device("cpu")) == name


def test_auto_resolution():
    assert resolve("auto", torch.device("cpu")) == "reference"
    if torch.cuda.is_available():
        want = "cuda" if "cuda" in ak.available_backends("cuda") else "triton"
        assert resolve("auto", torch.device("cuda")) == want


def test_unrunnable_backend_raises_clearly():
    with pytest.raises(RuntimeError, match="cannot run on cpu tensors"):
        resolve("cuda", torch.device("cpu"))
