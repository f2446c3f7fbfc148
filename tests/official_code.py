"""The official BAM / CBAM code (Jongchan/attention-module MODELS/: model_resnet.py, cbam.py,
bam.py), imported from its verbatim source text in tests/data/attention_module, with the two lines
of bam.py that do not run as committed fixed as a user's copy would be: its ChannelGate stores an
undefined `gate_activation` (dropped: the Sequential holds the ReLU), and pools with an H x H window
(made H x W: the true global mean on non-square maps too).

    mods = official_code.load()        # .model_resnet, .cbam, .bam: modules of one package
    net = mods.model_resnet.ResidualNet("ImageNet", 50, 1000, "BAM")

Used by tests/test_models.py, test_cbam_modules.py, test_bam_modules.py (a user's copy converted) and
benchmarks/bench_bam.py (the official BAM with its full-size
expansions)."""
import os
import sys
import types
import warnings

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "attention_module")
FILES = ("cbam", "bam", "model_resnet")  # import order: model_resnet imports the other two
PACKAGE = "official_attention_module"

BAM_FIXES = [
    ("        self.gate_activation = gate_activation\n", ""),
    ("F.avg_pool2d( in_tensor, in_tensor.size(2), stride=in_tensor.size(2) )",
     "F.avg_pool2d( in_tensor, (in_tensor.size(2), in_tensor.size(3)), "
     "stride=(in_tensor.size(2), in_tensor.size(3)) )"),
]


def source(name):
    """The verbatim text of MODELS/<name>.py."""
    with open(os.path.join(DATA, f"{name}.py.txt")) as f:
        return f.read()


def load():
    """The package `official_attention_module` with submodules cbam, bam (fixed) and model_resnet,
    executed from the source text (registered in sys.modules: model_resnet's relative imports
    resolve there); built once per process."""
    pkg = sys.modules.get(PACKAGE)
    if pkg is not None:
        return pkg
    pkg = types.ModuleType(PACKAGE)
    pkg.__path__ = []
    sys.modules[PACKAGE] = pkg
    try:
        for name in FILES:
            text = source(name)
            if name == "bam":
                for old, new in BAM_FIXES:
                    if text.count(old) != 1:
                        raise RuntimeError(f"official bam.py: the line to fix is not there once: {old!r}")
                    text = text.replace(old, new)
            mod = types.ModuleType(f"{PACKAGE}.{name}")
            mod.__package__ = PACKAGE
            mod.__file__ = os.path.join(DATA, f"{name}.py.txt")
            sys.modules[mod.__name__] = mod
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(text, mod.__file__, "exec"), mod.__dict__)
            setattr(pkg, name, mod)
    except Exception:
        for k in [k for k in sys.modules if k == PACKAGE or k.startswith(PACKAGE + ".")]:
            del sys.modules[k]
        raise
    return pkg
