"""The extension's install tree, built for real with CMake against a stand-in Slicer package.

The extension's CMakeLists are configured, built and installed with CMake itself; only Slicer's two
Python packaging macros are replaced (Testing/slicer_cmake_stub/, the copy and install semantics of
Slicer's SlicerMacroBuildScriptedModule and CTK's ctkMacroCompilePythonScript). Then the installed
tree is used as Slicer would use it: the module finds ACATLogic (and the ACATCli it runs) beside itself, and ACATLogic finds
the bundled models - from the installed files, not the checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "slicer_cmake_stub"
QT_SCRIPTED = Path("lib/Slicer-5.8/qt-scripted-modules")

# the `cmake` wheel of the test extra (pyproject.toml) puts it next to the interpreter; a system one also works
CMAKE = next((str(c) for c in (Path(sys.executable).with_name("cmake"),) if c.is_file()), None) or shutil.which("cmake")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed (pip install cmake)")


def _python_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def _run(*command, cwd=None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(install prefix, source copy): the extension configured, built and installed with one bundle."""
    tmp = tmp_path_factory.mktemp("extension")
    source = tmp / "src"
    source.mkdir()
    shutil.copy(ROOT / "CMakeLists.txt", source)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("ACATSlicer", "ACATLogic", "ACATCli"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    bundle = source / "Resources" / "Models" / "tiny-brain"
    bundle.mkdir(parents=True)  # a stand-in bundle: the layout test needs files, not trained weights
    (bundle / "model.json").write_text(json.dumps({"id": "tiny-brain", "version": "0", "task": "brain_stroke"}))
    (bundle / "baseline.safetensors").write_bytes(b"\0" * 16)
    (bundle / "NOTES.txt").write_text("not part of a bundle: not installed")
    build, prefix = tmp / "build", tmp / "install"
    _run(CMAKE, "-S", source, "-B", build, f"-DSlicer_DIR={STUB}", f"-DCMAKE_INSTALL_PREFIX={prefix}")
    _run(CMAKE, "--build", build)
    _run(CMAKE, "--install", build)
    return prefix, source


def test_module_acatlogic_and_models_are_installed_side_by_side(installed):
    prefix, source = installed
    modules = prefix / QT_SCRIPTED
    assert (modules / "ACATSlicer.py").is_file()
    assert _python_files(modules / "ACATSlicerLib") == _python_files(source / "ACATSlicer" / "ACATSlicerLib")
    assert (modules / "Resources" / "UI" / "ACATSlicer.ui").is_file()
    assert (modules / "Resources" / "Icons" / "ACATSlicer.png").is_file()
    # every ACATLogic .py file, sub-packages included (the CMake glob), and nothing else
    installed_logic = _python_files(modules / "ACATLogic")
    assert installed_logic == _python_files(ROOT / "ACATLogic")
    assert {"__init__.py", "bundle.py", "catalogue.py", "options.py"} <= installed_logic
    # the command the module runs in its background process (``-m ACATCli``), and nothing else of the front ends
    assert _python_files(modules / "ACATCli") == _python_files(ROOT / "ACATCli")
    assert {"__main__.py", "main.py", "commands.py"} <= _python_files(modules / "ACATCli")
    assert not {"ACATWeb", "ACATData", "training"} & {p.name for p in modules.iterdir()}
    assert sorted(p.name for p in (modules / "Resources" / "Models" / "tiny-brain").iterdir()) == [
        "baseline.safetensors", "model.json"]


def test_installed_module_finds_acatlogic_and_the_bundled_models_there(installed, tmp_path):
    prefix, _ = installed
    modules = (prefix / QT_SCRIPTED).resolve()
    probe = """
import json, sys
sys.path.insert(0, sys.argv[1])  # what Slicer does for a module folder
from ACATSlicerLib import models, paths
parent = paths.ensureACATLogicImportable()
import ACATLogic.bundle as bundle
import ACATLogic.catalogue as catalogue
import ACATCli
print(json.dumps({"parent": str(parent), "acatlogic": bundle.__file__, "acatcli": ACATCli.__file__,
                  "dirs": [str(d) for d in catalogue.models_dirs()],
                  "available": {k: str(v) for k, v in catalogue.available_models().items()},
                  "choices": [str(c.path) for c in models.ModelList().choices()]}))
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH, no ACAT_MODELS_DIR
    done = subprocess.run([sys.executable, "-c", probe, str(modules)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    assert found["parent"] == str(modules)
    assert found["acatlogic"] == str(modules / "ACATLogic" / "bundle.py")
    assert found["acatcli"] == str(modules / "ACATCli" / "__init__.py")  # what the background process runs
    assert found["dirs"] == [str(modules / "Resources" / "Models")]
    assert found["available"] == {"tiny-brain": str(modules / "Resources" / "Models" / "tiny-brain")}
    assert found["choices"] == [str(modules / "Resources" / "Models" / "tiny-brain")]


def test_models_dirs_puts_the_environment_first_then_the_folder_beside_acatlogic(monkeypatch, tmp_path):
    from ACATLogic import bundle, catalogue

    monkeypatch.delenv("ACAT_MODELS_DIR", raising=False)
    beside = Path(catalogue.__file__).resolve().parents[1] / "Resources" / "Models"
    assert catalogue.models_dirs() == [beside]
    monkeypatch.setenv("ACAT_MODELS_DIR", str(tmp_path))
    assert catalogue.models_dirs() == [tmp_path, beside]
    assert bundle.models_dirs is catalogue.models_dirs and bundle.resolve_model is catalogue.resolve_model  # one
