"""What users import comes from `core`, whatever module defines it, and importing `core` alone loads no torch."""

import importlib
import subprocess
import sys

import core


def test_the_documented_imports_work():
    from core import FoldError, FoldReport, certify, error_bound, fold

    assert callable(fold) and callable(error_bound) and callable(certify)
    assert issubclass(FoldError, core.BnfoldError) and FoldReport.__name__ == "FoldReport"


def test_every_public_name_is_its_defining_module_s_object():
    for name in core.__all__:
        module = importlib.import_module(core.PUBLIC[name])
        assert getattr(core, name) is getattr(module, name), name
    assert sorted(core.__all__) == sorted(core.PUBLIC) and set(core.__all__) <= set(dir(core))


def test_an_unknown_name_is_an_attribute_error():
    try:
        core.not_a_name  # noqa: B018
    except AttributeError as e:
        assert "not_a_name" in str(e)
    else:
        raise AssertionError("core.not_a_name did not raise")


def test_importing_core_loads_no_torch():
    """The command line checks its arguments before torch loads: `import core` must not load it."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, core, core.app.cli; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"
