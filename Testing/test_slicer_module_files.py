"""The Slicer module's files, checked without the Slicer GUI: CMake lists, the .ui bindings, imports,
the template order, user-facing strings, the icon and the dependency list."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "ACATSlicer"
MODULE_PY = MODULE / "ACATSlicer.py"
UI = MODULE / "Resources" / "UI" / "ACATSlicer.ui"
# what a stock Slicer provides to a scripted module (SampleData is one of its modules), plus this project's
# packages and the PyTorch extension
PROVIDED = {"slicer", "vtk", "qt", "ctk", "numpy", "pydicom", "SampleData", "DICOMLib", "ACATLogic", "ACATSlicerLib",
            "PyTorchUtils"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _cmake_list(text: str, variable: str) -> list[str]:
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "ACATSlicer") for line in block.splitlines() if line.strip()]


def test_cmake_lists_every_script_and_resource_and_nothing_else():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "set(MODULE_NAME ACATSlicer)" in text
    scripts, resources = _cmake_list(text, "MODULE_PYTHON_SCRIPTS"), _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    on_disk_py = sorted(str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts)
    on_disk_res = sorted(str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file())
    assert sorted(scripts) == on_disk_py
    assert sorted(resources) == on_disk_res
    assert len(set(scripts)) == len(scripts)


def test_top_level_cmake_installs_acatlogic_acatcli_and_the_bundled_models_beside_the_module():
    """Globbed, so every ACATLogic and ACATCli .py file (the module's background process runs
    ``-m ACATCli``) and every bundle is installed (Testing/test_slicer_packaging.py builds and installs it
    for real); here: the globs cover the files and land where the lookups look."""
    text = (ROOT / "CMakeLists.txt").read_text()
    block = re.search(r"file\(GLOB_RECURSE ACAT_PYTHON_SCRIPTS RELATIVE \$\{CMAKE_CURRENT_SOURCE_DIR\} "
                      r"CONFIGURE_DEPENDS\s+(.*?)\)", text, re.S).group(1)
    globs = [line.strip().replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for line in block.splitlines() if line.strip()]
    assert globs == ["ACATLogic/*.py", "ACATCli/*.py"]
    globbed = {str(p.relative_to(ROOT)) for g in ("ACATLogic/**/*.py", "ACATCli/**/*.py") for p in ROOT.glob(g)
               if "__pycache__" not in p.parts}
    assert {"ACATLogic/__init__.py", "ACATLogic/bundle.py", "ACATLogic/catalogue.py", "ACATCli/__main__.py",
            "ACATCli/main.py"} <= globbed
    for pattern in ("Resources/Models/*/model.json", "Resources/Models/*/*.safetensors"):
        assert f"${{CMAKE_CURRENT_SOURCE_DIR}}/{pattern}" in text
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\)\n", text, re.S).group(1)
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in call
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in call and "NO_INSTALL_SUBDIR" in call
    assert 'SCRIPTS "${ACAT_PYTHON_SCRIPTS}"' in call and 'RESOURCES "${ACAT_MODEL_FILES}"' in call


def test_top_level_cmake_has_real_metadata_and_adds_the_module():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^add_subdirectory\(ACATSlicer\)$", text, re.M)
    assert 'set(EXTENSION_CATEGORY "Quantification")' in text
    for key in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL"):
        value = re.search(rf'set\(EXTENSION_{key} "([^"]*)"\)', text).group(1)
        assert value, key
    base = {"${ACAT_RAW_URL}": "", "${ACAT_PUBLIC_URL}": ""}  # relative until the repository is published
    for key in ("ICONURL", "SCREENSHOTURLS", "HOMEPAGE"):
        value = re.search(rf'set\(EXTENSION_{key} "([^"]*)"\)', text).group(1)
        for variable, replacement in base.items():
            value = value.replace(variable, replacement)
        assert (ROOT / value).is_file(), key
    assert "5.10 or newer" in text and (ROOT / "LICENSE.txt").read_text().lstrip().startswith("Apache License")
    assert "Fontanella" in text and "ICML 2023" in text


# -- the .ui file -----------------------------------------------------------------------------
def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _parameter_fields() -> dict:
    """name -> ("node", [MRML classes]) or (kind, choices) of every field of ACATSlicerParameterNode: the ones
    its class body declares and the ones generated from ExplainOptions (the widget tests run the class)."""
    sys.path.insert(0, str(MODULE))
    from ACATSlicerLib.parameters import explainOptionParameters

    tree = _tree(MODULE_PY)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ACATSlicerParameterNode")
    assert [ast.unparse(b) for b in cls.bases] == ["ParameterNode"]
    fields = {}
    for statement in cls.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call):
            name, call = statement.targets[0].id, statement.value
            if ast.unparse(call.func) == "NodeParameter":
                fields[name] = ("node", [a.value for a in call.args])
            elif ast.unparse(call.func) == "Parameter":
                fields[name] = (ast.unparse(call.args[0]), None)
    assert "extraFields = staticmethod(explainOptionParameters)" in ast.unparse(cls)
    for name, field in explainOptionParameters().items():
        assert name not in fields
        fields[name] = (field.kind.__name__, field.choices)
    return fields


def _parameter_name(widget: ET.Element):
    for p in widget.findall("property"):
        if p.get("name") == "SlicerParameterName":
            return p.find("string").text
    return None


def test_every_widget_the_code_uses_exists_in_the_ui():
    used = {n.attr for n in ast.walk(_tree(MODULE_PY))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"}
    assert {"explainButton", "cancelButton", "progressBar", "statusLabel", "modelSelector"} <= used
    missing = used - set(_ui_widgets())
    assert not missing, f"ACATSlicer.py uses widgets that the .ui lacks: {sorted(missing)}"


def test_every_parameter_name_binds_to_a_field_of_a_matching_type():
    """The .ui's SlicerParameterName properties name parameter-node fields, each shown by a widget that can
    show its type (ACATSlicerLib/panel.py binds them; Testing/test_slicer_widget.py runs the binding)."""
    sys.path.insert(0, str(MODULE))
    from ACATSlicerLib.panel import SIGNALS

    fields = _parameter_fields()
    bound = {}
    for name, widget in _ui_widgets().items():
        param = _parameter_name(widget)
        if param is None:
            continue
        assert param in fields, f"{name}: SlicerParameterName {param!r} is not a parameter-node field"
        assert param not in bound, f"{param!r} is bound twice"
        cls = bound[param] = widget.get("class")
        assert cls in SIGNALS, (param, cls)
        kind, detail = fields[param]
        expected = {"node": {"qMRMLNodeComboBox"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"},
                    "int": {"QSpinBox"}, "bool": {"QCheckBox"},
                    "str": {"QComboBox"} if detail else {"QLineEdit"}}[kind]
        assert cls in expected, (param, cls, kind)
        if kind == "node":
            types = [s.text for s in widget.find("property[@name='nodeTypes']").iter("string")]
            assert sorted(types) == sorted(detail), param
    expected = {"inputVolume", "method", "device", "variant", "steps", "alpha", "stepSize", "targets", "reference",
                "opacity", "thresholdPercentile", "lesionMask", "dicomResults", "deidentify"}
    assert set(bound) == expected
    assert "model" in set(fields) - set(bound)  # the model selector is filled from the bundles found


def test_node_selectors_get_the_scene():
    root = ET.parse(UI).getroot()
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)" and c.findtext("sender") == "ACATSlicer"}
    combos = {n for n, w in _ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert combos == connected == {"inputVolumeSelector", "lesionMaskSelector"}
    assert root.find("widget").get("class") == "qMRMLWidget"


def test_panel_has_advanced_section_and_research_use_line():
    widgets = _ui_widgets()
    assert widgets["advancedCollapsibleButton"].get("class") == "ctkCollapsibleButton"
    advanced = {w.get("name") for w in widgets["advancedCollapsibleButton"].iter("widget")}
    assert {"stepsSpinBox", "alphaSpinBox", "stepSizeSpinBox", "targetsLineEdit", "referenceComboBox"} <= advanced
    label = widgets["researchUseLabel"].find("property[@name='text']/string").text
    assert "Research use only" in label and "not for diagnosis" in label


# -- the module file ------------------------------------------------------------------------------
def test_module_file_is_thin_and_registers_the_sample_data_at_startup():
    text = MODULE_PY.read_text()
    # Qt glue only: the panel, the version gate, the install dialog, the DICOM self-test
    assert len(text.splitlines()) < 480, "move what is not Qt glue into ACATSlicerLib/"
    assert 'slicer.app.connect("startupCompleted()", registerSampleData)' in text
    tree = _tree(MODULE_PY)
    register = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "registerSampleData")
    calls = {ast.unparse(n.func) for n in ast.walk(register) if isinstance(n, ast.Call)}
    assert {"SampleData.SampleDataLogic.registerCustomSampleDataSource", "sample_data.sampleDataSources"} <= calls


def test_module_follows_the_template_order():
    tree = _tree(MODULE_PY)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["ACATSlicer", "ACATSlicerParameterNode", "ACATSlicerWidget", "ACATSlicerLogic", "ACATSlicerTest"]
    bases = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert bases["ACATSlicerTest"] == ["ScriptedLoadableModuleTest"]
    # the logic is the run's one controller (ACATSlicerLib, shared with the web viewer) and the template's logic;
    # the controller first, so that ScriptedLoadableModuleLogic's super().__init__() reaches object, not it
    # (Testing/test_slicer_runner.py::test_the_module_logic_is_the_controller runs the class for real)
    assert bases["ACATSlicerLogic"] == ["ExplainController", "ScriptedLoadableModuleLogic"]


def test_the_widget_talks_to_its_logic_only():
    """One route for a run: the widget calls ``self.logic`` (the controller); it holds no controller, session
    or runner of its own and reaches into none, and what it calls exists on the logic."""
    sys.path.insert(0, str(MODULE))
    from ACATSlicerLib.controller import ExplainController

    tree = _tree(MODULE_PY)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    widget, logic = classes["ACATSlicerWidget"], classes["ACATSlicerLogic"]
    assigned = {ast.unparse(t) for n in ast.walk(widget) if isinstance(n, ast.Assign) for t in n.targets}
    assert not {a for a in assigned if a.startswith("self.") and a.count(".") == 1} & {
        "self.explainer", "self.controller", "self.session", "self.runner"}
    used = {n.attr for n in ast.walk(widget)
            if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "self.logic"}
    reached = {ast.unparse(n) for n in ast.walk(widget) if isinstance(n, ast.Attribute)
               and isinstance(n.value, ast.Attribute) and ast.unparse(n.value.value) == "self.logic"}
    assert not reached, f"the widget reaches past its logic: {sorted(reached)}"
    own = {f.name for f in logic.body if isinstance(f, ast.FunctionDef)}
    assert {"startExplain", "poll", "cancel"} <= used
    assert used <= own | set(dir(ExplainController)) | {"running", "result"}, used - own - set(dir(ExplainController))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"ExplainSession", "ExplainSettings", "ViewerSession"}


def test_the_panels_explain_options_are_explainoptions_fields():
    """Options are defined once (ACATLogic/options.py): the parameter node's fields besides the panel's own
    (input, model, display, lesion) are exactly the ExplainOptions fields under their camelCase names, with
    that field's choices (and "model default" first where the field leaves the choice to the model card);
    none is listed by hand in the module."""
    import dataclasses

    from ACATLogic.options import ExplainOptions

    sys.path.insert(0, str(MODULE))
    from ACATSlicerLib.request import MODEL_DEFAULT, panelName

    options = {panelName(f.name): f for f in dataclasses.fields(ExplainOptions)}
    panel_own = {"inputVolume", "model", "opacity", "thresholdPercentile", "lesionMask", "dicomResults", "deidentify"}
    fields = _parameter_fields()
    assert set(fields) - panel_own == set(options)
    for name, f in options.items():
        kind, choices = fields[name]
        if f.metadata["choices"]:
            expected = tuple(f.metadata["choices"]) if f.default is not None else (MODEL_DEFAULT,
                                                                                   *f.metadata["choices"])
            assert choices == expected, name
    assert MODEL_DEFAULT not in ExplainOptions.__dataclass_fields__["reference"].metadata["choices"]
    text = MODULE_PY.read_text()
    assert not re.search(r'(stepSize|stepsSpinBox|"step_size")\s*=', text)  # no option listed by hand


def test_help_and_acknowledgement_cite_the_paper_and_say_research_use():
    tree = _tree(MODULE_PY)
    constants = {n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.targets[0], ast.Name)}
    paper = ast.literal_eval(constants["PAPER"])
    assert "ACAT: Adversarial Counterfactual Attention for Classification and Detection in Medical Imaging" in paper
    assert paper.startswith("Fontanella") and "ICML 2023" in paper
    research = ast.literal_eval(constants["RESEARCH_USE"])
    assert "Research use only" in research and "not for diagnosis" in research
    assigned = {ast.unparse(n.targets[0]): ast.unparse(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)}
    assert "RESEARCH_USE" in assigned["self.parent.helpText"] and "PAPER" in assigned["self.parent.helpText"]
    assert "PAPER" in assigned["self.parent.acknowledgementText"]


def test_user_facing_strings_are_translatable_and_errors_go_through_slicer():
    tree = _tree(MODULE_PY)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "tryWithErrorDisplay", "errorDisplay", "confirmOkCancelDisplay"):
            first = node.args[0]
            ok = (isinstance(first, ast.Call) and ast.unparse(first.func) in ("_", "_(...).format")) or (
                isinstance(first, ast.Call) and isinstance(first.func, ast.Attribute) and first.func.attr == "format"
                and isinstance(first.func.value, ast.Call) and ast.unparse(first.func.value.func) == "_")
            assert ok, f"line {node.lineno}: {ast.unparse(first)} is not wrapped in _()"
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]).endswith(".text"):
            value = node.value
            assert not (isinstance(value, ast.Constant) and value.value), f"line {node.lineno}: untranslated text"
    assert "tryWithErrorDisplay" in MODULE_PY.read_text()


def _module_level_imports(tree: ast.Module) -> set[str]:
    return _imports(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                               type_ignores=[]))


def test_module_imports_only_what_slicer_provides():
    files = [MODULE_PY] + sorted((MODULE / "ACATSlicerLib").glob("*.py"))
    for path in files:
        tree = _tree(path)
        foreign = {n for n in _imports(tree) if n not in PROVIDED and n not in sys.stdlib_module_names}
        assert not foreign, f"{path.relative_to(ROOT)} imports {foreign}, which Slicer does not provide"
        if path.parent.name == "ACATSlicerLib":
            assert not _imports(tree) & {"qt", "ctk", "PyTorchUtils"}, path.name
            # ACATLogic needs torch & co., which a fresh Slicer lacks: only imported inside functions
            assert "ACATLogic" not in _module_level_imports(tree), path.name
            used = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            assert not {"slicer.app", "slicer.modules", "slicer.mrmlScene"} & used, path.name


# -- icon and dependencies ----------------------------------------------------------------------
def test_icon_is_the_generated_drawing():
    from PIL import Image

    sys.path.insert(0, str(ROOT / "Utilities"))
    try:
        from make_slicer_icon import ICON, draw_icon
    finally:
        sys.path.remove(str(ROOT / "Utilities"))
    assert ICON == MODULE / "Resources" / "Icons" / "ACATSlicer.png"
    committed = Image.open(ICON)
    assert committed.size == (128, 128)
    np.testing.assert_array_equal(np.asarray(committed.convert("RGBA")), np.asarray(draw_icon()))


def test_dependency_list_mirrors_pyproject():
    """Every dependency of pyproject.toml is accounted for inside Slicer: installed when missing (torch,
    safetensors, at pyproject's minimum), Slicer's own (never installed or replaced), or not needed there."""
    sys.path.insert(0, str(MODULE))
    from ACATSlicerLib.dependencies import (NOT_NEEDED_IN_SLICER, REQUIREMENTS, SLICER_PROVIDES, installPlan,
                                            missingRequirements, missingSlicerPackages)

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {}
    for spec in deps:
        name, _, minimum = re.match(r"([A-Za-z0-9_.-]+)\s*(>=\s*([0-9.]+))?", spec).groups()
        declared[name.lower()] = minimum
    listed = {r.distribution.lower(): r.minimum for r in REQUIREMENTS}
    provided = {name.lower() for name in SLICER_PROVIDES}
    assert listed.keys() == {"torch", "safetensors"}
    assert not (listed.keys() & provided) and not (listed.keys() & NOT_NEEDED_IN_SLICER.keys())
    assert set(listed) | provided | set(NOT_NEEDED_IN_SLICER) == set(declared)
    assert listed == {k: v for k, v in declared.items() if k in listed}
    assert missingRequirements() == [] and missingSlicerPackages() == []  # this environment has them all
    assert missingSlicerPackages({"acat-no-such": "acat_no_such_module"}) == ["acat-no-such"]
    assert installPlan(list(REQUIREMENTS), pyTorchUtilsAvailable=True) == (True, ["safetensors>=0.4"])
    assert installPlan(list(REQUIREMENTS), pyTorchUtilsAvailable=False) == (False, ["torch>=2.4", "safetensors>=0.4"])


def test_what_loads_with_the_module_is_python_3_9_so_older_slicer_can_say_what_it_needs():
    """Slicer 5.6 and 5.8 run Python 3.9: the module file and everything it imports when Slicer loads it must
    parse there, so that the panel can say that Slicer 5.10 is needed instead of failing to load."""
    files = [MODULE_PY, *sorted((MODULE / "ACATSlicerLib").glob("*.py")),
             *(ROOT / "ACATLogic" / n for n in ("__init__.py", "options.py", "catalogue.py", "errors.py"))]
    for path in files:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))
    sys.path.insert(0, str(MODULE))
    from ACATSlicerLib.compatibility import MINIMUM_SLICER, slicerVersionProblem

    assert MINIMUM_SLICER == (5, 10) and slicerVersionProblem(5, 10) == "" and slicerVersionProblem(6, 0) == ""
    assert "needs 3D Slicer 5.10 or newer; this is Slicer 5.8" in slicerVersionProblem(5, 8)
