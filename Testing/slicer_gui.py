"""The Slicer GUI's pure-Python layer, stood in for the module's widget tests (Testing/test_slicer_widget.py).

The scene, the MRML nodes, the logics and ``slicer.util``'s MRML helpers are Slicer's own (slicer-core);
only what needs Slicer's Qt application is stood in here, following Slicer 5.10's behaviour (checked against
its source; ACATSlicer/SLICER_API.md):

* ``qt``: QTimer (fired by the test), QLabel, QFileDialog (returns what the test chose);
* the .ui's widgets, built from ACATSlicer.ui itself (`loadUI`): each named widget of the file is a
  `Widget` with the Qt properties, slots and signals the module uses. Combo boxes, spin boxes and sliders
  emit their change signals as Qt does (adding the first item selects it; a value is clamped to the
  range; a disabled button cannot be clicked), so the module's signal handling runs as in Slicer;
* ``slicer.app`` (version, settings, cache path), ``slicer.i18n``, ``slicer.ScriptedLoadableModule``
  (module, widget, logic - whose ``getParameterNode`` makes the singleton vtkMRMLScriptedModuleNode in the
  real scene as Slicer's does - and test), and the dialogs of ``slicer.util``;
* ``DICOMLib.DICOMUtils``' database (`DicomDatabase`: Slicer's is a CTK/SQLite one, not in slicer-core): the
  files of an imported folder indexed by series; loading a series goes through Slicer's own reader, as
  Slicer's DICOMScalarVolumePlugin does (`vtkSlicerVolumesLogic.AddArchetypeScalarVolume` with the file list).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = ROOT / "ACATSlicer" / "ACATSlicer.py"
UI_FILE = ROOT / "ACATSlicer" / "Resources" / "UI" / "ACATSlicer.ui"


def _positionalCount(slot, available: int) -> int:
    import inspect

    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return available
    return min(available, sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters))


class Signals:
    """Qt signals by their signature: ``connect``, ``disconnect``, ``emit``, ``blockSignals``."""

    def __init__(self) -> None:
        self._slots: dict = {}
        self._blocked = False

    def connect(self, signal: str, slot) -> bool:
        self._slots.setdefault(signal, []).append(slot)
        return True

    def disconnect(self, signal: str, slot) -> bool:
        slots = self._slots.get(signal, [])
        if slot in slots:
            slots.remove(slot)
            return True
        return False

    def emit(self, signal: str, *args) -> None:
        """Call each slot with as many of the signal's arguments as it takes, as PythonQt does (Slicer's
        template connects ``clicked(bool)`` to ``onApplyButton(self)``)."""
        if not self._blocked:
            for slot in list(self._slots.get(signal, [])):
                slot(*args[:_positionalCount(slot, len(args))])

    def blockSignals(self, block: bool) -> bool:
        was, self._blocked = self._blocked, bool(block)
        return was

    def connections(self, signal: str) -> int:
        return len(self._slots.get(signal, []))


class Widget(Signals):
    """A widget of the .ui: its class, name, properties (static and dynamic) and children."""

    def __init__(self, cls: str, name: str, properties: dict) -> None:
        super().__init__()
        object.__setattr__(self, "_cls", cls)
        self._props = dict(properties)
        self.name = self.objectName = name
        self._children: list = []
        self.enabled = bool(properties.get("enabled", True))
        self.visible = True
        self.toolTip = properties.get("toolTip", "")
        self.text = properties.get("text", "")

    def className(self) -> str:
        return self._cls

    def children(self) -> list:
        return list(self._children)

    def property(self, name: str):
        return self._props.get(name)

    def setProperty(self, name: str, value) -> None:
        self._props[name] = value

    def layout(self):
        return self

    def addWidget(self, widget) -> None:
        self._children.append(widget)

    def setMRMLScene(self, scene) -> None:  # qMRMLWidget: the .ui connects mrmlSceneChanged to its node selectors
        for child in self._children:
            child.setMRMLScene(scene)

    def show(self) -> None:
        self.visible = True


class Button(Widget):
    def click(self) -> bool:
        """A user's click: nothing happens on a disabled button, as in Qt."""
        if not self.enabled:
            return False
        self.emit("clicked(bool)", False)
        return True


class CollapsibleButton(Widget):
    def __init__(self, cls, name, properties):
        super().__init__(cls, name, properties)
        self.collapsed = bool(properties.get("collapsed", False))


class ComboBox(Widget):
    def __init__(self, cls, name, properties):
        super().__init__(cls, name, properties)
        self.items: list = []  # (text, data)
        self._index = -1

    def addItem(self, text, data=None) -> None:
        self.items.append((str(text), data))
        if self._index < 0:
            self.setCurrentIndex(0)

    def clear(self) -> None:
        self.items = []
        if self._index != -1:
            self._index = -1
            self.emit("currentIndexChanged(int)", -1)

    @property
    def count(self) -> int:
        return len(self.items)

    def findData(self, data) -> int:
        return next((n for n, (_, d) in enumerate(self.items) if d == data), -1)

    def findText(self, text) -> int:
        return next((n for n, (t, _) in enumerate(self.items) if t == text), -1)

    def setCurrentIndex(self, index: int) -> None:
        index = index if 0 <= index < len(self.items) else -1
        if index != self._index:
            self._index = index
            self.emit("currentIndexChanged(int)", index)

    def setCurrentText(self, text) -> None:
        index = self.findText(text)
        if index >= 0:
            self.setCurrentIndex(index)

    @property
    def currentIndex(self) -> int:
        return self._index

    @property
    def currentText(self) -> str:
        return self.items[self._index][0] if self._index >= 0 else ""

    @property
    def currentData(self):
        return self.items[self._index][1] if self._index >= 0 else None

    def choose(self, text) -> None:
        """A user's choice in the list."""
        self.setCurrentIndex(self.findText(text))


class NumberWidget(Widget):
    """QSpinBox (int), QDoubleSpinBox and ctkSliderWidget (double): clamped to [minimum, maximum]."""

    def __init__(self, cls, name, properties):
        super().__init__(cls, name, properties)
        self._int = cls == "QSpinBox"
        self.minimum = float(properties.get("minimum", 0))
        self.maximum = float(properties.get("maximum", 99 if cls != "ctkSliderWidget" else 100))
        self.decimals = int(properties.get("decimals", 2))
        self._value = self._clamp(float(properties.get("value", self.minimum)))

    def _clamp(self, value: float):
        value = min(max(float(value), self.minimum), self.maximum)
        return int(round(value)) if self._int else round(value, self.decimals)

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value) -> None:
        value = self._clamp(value)
        if value != self._value:
            self._value = value
            self.emit("valueChanged(int)" if self._int else "valueChanged(double)", value)


class LineEdit(Widget):
    def __init__(self, cls, name, properties):
        super().__init__(cls, name, properties)
        self._text = ""

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value) -> None:
        if str(value) != getattr(self, "_text", None):
            self._text = str(value)
            self.emit("textChanged(QString)", self._text)


class CheckBox(Widget):
    """QCheckBox: ``checked``; a change emits ``toggled(bool)`` (also when set by code, as in Qt)."""

    def __init__(self, cls, name, properties):
        super().__init__(cls, name, properties)
        self._checked = bool(properties.get("checked", False))

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value) -> None:
        if bool(value) != getattr(self, "_checked", None):
            self._checked = bool(value)
            self.emit("toggled(bool)", self._checked)

    def click(self) -> bool:
        """A user's click: nothing happens on a disabled check box, as in Qt."""
        if not self.enabled:
            return False
        self.checked = not self.checked
        return True


class NodeComboBox(Widget):
    """qMRMLNodeComboBox: the nodes of ``nodeTypes`` in its scene; without noneEnabled the first is selected."""

    def __init__(self, cls, name, properties):
        super().__init__(cls, name, properties)
        self.nodeTypes = list(properties.get("nodeTypes", []))
        self.noneEnabled = bool(properties.get("noneEnabled", False))
        self.scene, self._node = None, None

    def setMRMLScene(self, scene) -> None:
        self.scene = scene
        if self._node is None and not self.noneEnabled:
            self.setCurrentNode(next(iter(self.nodes()), None))

    def nodes(self) -> list:
        found = []
        for n in range(self.scene.GetNumberOfNodes() if self.scene else 0):
            node = self.scene.GetNthNode(n)
            if node.GetClassName() in self.nodeTypes or any(
                    node.IsA(t) for t in self.nodeTypes if self.property("showChildNodeTypes") is not False):
                found.append(node)
        return found

    def currentNode(self):
        return self._node

    @property
    def currentNodeID(self) -> str:
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node) -> None:
        if node is not None and node.GetClassName() not in self.nodeTypes and not any(
                node.IsA(t) for t in self.nodeTypes):
            raise TypeError(f"{self.name} cannot show a {node.GetClassName()}")
        if node is not self._node:
            self._node = node
            self.emit("currentNodeChanged(vtkMRMLNode*)", node)
            self.emit("currentNodeIDChanged(QString)", node.GetID() if node is not None else "")

    def choose(self, node) -> None:
        """A user's choice in the list ("None" is in the list only with noneEnabled)."""
        if node is None and not self.noneEnabled:
            raise AssertionError(f"{self.name} offers no 'None' item")
        self.setCurrentNode(node)


WIDGETS = {"QPushButton": Button, "ctkCollapsibleButton": CollapsibleButton, "QComboBox": ComboBox,
           "QSpinBox": NumberWidget, "QDoubleSpinBox": NumberWidget, "ctkSliderWidget": NumberWidget,
           "QLineEdit": LineEdit, "QCheckBox": CheckBox, "qMRMLNodeComboBox": NodeComboBox}


def _value(prop: ET.Element):
    child = next(iter(prop))
    if child.tag == "bool":
        return child.text == "true"
    if child.tag in ("number", "double"):
        return float(child.text)
    if child.tag == "stringlist":
        return [s.text for s in child]
    return child.text or ""


def loadUI(path) -> Widget:
    """Every named widget of the .ui as a stand-in widget (a flat list of children of the root)."""
    root = ET.parse(path).getroot().find("widget")
    top = Widget(root.get("class"), root.get("name"), {})
    for element in root.iter("widget"):
        if element is root:
            continue
        properties = {p.get("name"): _value(p) for p in element.findall("property")}
        cls = element.get("class")
        top.addWidget(WIDGETS.get(cls, Widget)(cls, element.get("name"), properties))
    return top


class Settings:
    """QSettings: value(key, default) and setValue(key, value), kept by the test across "sessions"."""

    def __init__(self, store: dict) -> None:
        self.store = store

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value) -> None:
        self.store[key] = value


class Timer(Signals):
    def __init__(self) -> None:
        super().__init__()
        self.active, self.interval = False, 0

    def setInterval(self, ms) -> None:
        self.interval = ms

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    def fire(self) -> None:
        if self.active:
            self.emit("timeout()")


class DicomDatabase:
    """ctkDICOMDatabase as DICOMUtils uses it: ``isOpen``, ``filesForSeries``; files indexed by importDicom."""

    def __init__(self) -> None:
        self.isOpen = True
        self.series: dict = {}  # SeriesInstanceUID -> [file paths]

    def filesForSeries(self, seriesUID) -> list:
        return list(self.series.get(seriesUID, []))


def dicomUtils(gui) -> types.SimpleNamespace:
    """DICOMLib.DICOMUtils' TemporaryDICOMDatabase, importDicom and loadSeriesByUID (Slicer 5.10's signatures:
    SLICER_API.md), over `DicomDatabase`."""
    import slicer

    class TemporaryDICOMDatabase:
        def __enter__(self):
            self.original = getattr(slicer, "dicomDatabase", None)
            slicer.dicomDatabase = DicomDatabase()
            return slicer.dicomDatabase

        def __exit__(self, *exc):
            slicer.dicomDatabase = self.original

    def importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False):
        import pydicom

        database = dicomDatabase if dicomDatabase is not None else slicer.dicomDatabase
        for path in sorted(Path(dicomDataDir).rglob("*")):
            if path.is_file():
                uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
                database.series.setdefault(uid, []).append(str(path))
        return True

    def loadSeriesByUID(seriesUIDs, messages=None, progressCallback=None, enabledPluginClassNames=None):
        """Each series as the scalar volume plugin loads it: files in slice order, named "number: description"."""
        import numpy as np
        import pydicom
        import vtk

        if not isinstance(seriesUIDs, list):
            raise ValueError("SeriesUIDs must contain a list")
        if not slicer.dicomDatabase.isOpen:
            raise OSError("DICOM module or database cannot be accessed")
        loaded = []
        for uid in seriesUIDs:
            headers = [(pydicom.dcmread(f, stop_before_pixels=True), f)
                       for f in slicer.dicomDatabase.filesForSeries(uid)]
            if not headers:
                continue

            def along(item):
                iop = np.array(item[0].ImageOrientationPatient, dtype=float)
                return float(np.array(item[0].ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))

            headers.sort(key=along)
            fileList = vtk.vtkStringArray()
            for _, f in headers:
                fileList.InsertNextValue(f)
            first = headers[0][0]
            name = f"{first.get('SeriesNumber', '')}: {first.get('SeriesDescription', '')}"
            node = slicer.modules.volumes.logic().AddArchetypeScalarVolume(headers[0][1], name, 0, fileList)
            gui.dicomLoads.append((uid, len(headers), node.GetID()))
            loaded.append(node.GetID())
        return loaded

    return types.SimpleNamespace(TemporaryDICOMDatabase=TemporaryDICOMDatabase, importDicom=importDicom,
                                 loadSeriesByUID=loadSeriesByUID)


class Gui:
    """What the test controls and sees of the GUI: dialogs' answers, errors shown, timers, settings."""

    def __init__(self, scene, cacheDir: Path, version=(5, 10), settings=None) -> None:
        self.scene, self.cacheDir, self.version = scene, cacheDir, version
        self.settings = settings if settings is not None else {}
        self.errors: list = []  # messages shown by tryWithErrorDisplay / errorDisplay
        self.confirmations: list = []  # texts of the questions asked
        self.answer = True  # the user's answer to any question
        self.folder = ""  # what QFileDialog returns
        self.timers: list = []
        self.pipInstalled: list = []
        self.startupSlots: list = []
        self.widgets: list = []  # module widgets opened, cleaned up at the end of the test
        self.dicomLoads: list = []  # (series UID, number of files, node ID) loaded through DICOMUtils
        self.displayed: list = []  # messages of slicer.util.delayDisplay

    # -- the modules ---------------------------------------------------------------------------------
    def qtModule(self):
        gui = self

        class QTimer(Timer):
            def __init__(self):
                super().__init__()
                gui.timers.append(self)

        class QLabel(Widget):
            def __init__(self, text=""):
                super().__init__("QLabel", "", {"text": text})
                self.wordWrap = False

        class QFileDialog:
            @staticmethod
            def getExistingDirectory(parent=None, caption=""):
                return gui.folder

        return types.SimpleNamespace(QTimer=QTimer, QLabel=QLabel, QFileDialog=QFileDialog)

    def appObject(self):
        gui = self
        return types.SimpleNamespace(
            majorVersion=self.version[0], minorVersion=self.version[1], cachePath=str(self.cacheDir),
            temporaryPath=str(self.cacheDir), userSettings=lambda: Settings(gui.settings),
            connect=lambda signal, slot: gui.startupSlots.append((signal, slot)), processEvents=lambda: None)

    def scriptedLoadableModule(self):
        import slicer

        class ScriptedLoadableModule:
            def __init__(self, parent):
                self.parent, self.moduleName = parent, type(self).__name__
                parent.title, parent.categories, parent.dependencies = "", [], []

        class ScriptedLoadableModuleWidget:
            def __init__(self, parent=None):
                self.moduleName = type(self).__name__.removesuffix("Widget")
                self.parent = parent if parent is not None else Widget("qMRMLWidget", "", {})
                self.layout = self.parent.layout()

            def resourcePath(self, filename):
                return os.path.join(os.path.dirname(str(MODULE_FILE)), "Resources", filename)

            def setup(self):
                pass

            def cleanup(self):
                pass

        class ScriptedLoadableModuleLogic:
            def __init__(self, parent=None):
                super().__init__()
                self.moduleName = type(self).__name__.removesuffix("Logic")
                self.isSingletonParameterNode = True

            def getParameterNode(self):
                scene = slicer.mrmlScene
                node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
                if node is not None:
                    return node
                node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                node.SetName(scene.GenerateUniqueName(self.moduleName))
                return scene.AddNode(node)

        class ScriptedLoadableModuleTest(unittest.TestCase):
            def delayDisplay(self, message, requestedDelay=None, msec=None):  # Slicer's: slicer.util.delayDisplay
                slicer.util.delayDisplay(message, 0 if msec is None else msec)

        return types.SimpleNamespace(ScriptedLoadableModule=ScriptedLoadableModule,
                                     ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                                     ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                                     ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)

    # -- slicer.util's dialogs -----------------------------------------------------------------------
    @contextlib.contextmanager
    def tryWithErrorDisplay(self, message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - as Slicer's: shown to the user, not raised
            self.errors.append(f"{message} {exc}")

    def confirm(self, text, windowTitle=None, **kwargs) -> bool:
        self.confirmations.append(text)
        return self.answer

    def errorDisplay(self, text, windowTitle=None, **kwargs) -> None:
        self.errors.append(text)

    def progressDialog(self, parent=None, value=0, maximum=100, labelText="", windowTitle="", **kwargs):
        return types.SimpleNamespace(wasCanceled=False, value=value, labelText=labelText, close=lambda: None)

    def delayDisplay(self, message, autoCloseMsec=1000, parent=None, **kwargs) -> None:
        """Shows the message for ``autoCloseMsec`` while the application runs on (here: the test sleeps)."""
        import time

        self.displayed.append(message)
        time.sleep(max(0, autoCloseMsec) / 1000.0 if self.delayDisplaySleeps else 0.0)

    delayDisplaySleeps = False

    def install(self, monkeypatch) -> None:
        """Put the stand-ins where the module imports them from."""
        import slicer
        import slicer.util

        monkeypatch.setitem(sys.modules, "qt", self.qtModule())
        monkeypatch.setitem(sys.modules, "DICOMLib", types.SimpleNamespace(DICOMUtils=dicomUtils(self)))
        monkeypatch.setitem(sys.modules, "slicer.i18n", types.SimpleNamespace(
            tr=lambda text: text, translate=lambda context, text: text))
        monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", self.scriptedLoadableModule())
        monkeypatch.setattr(slicer, "app", self.appObject(), raising=False)
        for name, value in (("loadUI", loadUI), ("tryWithErrorDisplay", self.tryWithErrorDisplay),
                            ("confirmOkCancelDisplay", self.confirm), ("confirmYesNoDisplay", self.confirm),
                            ("errorDisplay", self.errorDisplay), ("createProgressDialog", self.progressDialog),
                            ("pip_install", self.pipInstalled.append), ("delayDisplay", self.delayDisplay)):
            monkeypatch.setattr(slicer.util, name, value, raising=False)

    def fireTimers(self) -> None:
        for timer in list(self.timers):
            timer.fire()


def loadModule(name: str = "ACATSlicer_under_test"):
    """ACATSlicer.py imported afresh (after `Gui.install`), as Slicer's module factory imports it."""
    sys.path.insert(0, str(MODULE_FILE.parent))
    spec = importlib.util.spec_from_file_location(name, MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def moduleParent() -> types.SimpleNamespace:
    """The qSlicerScriptedLoadableModule a module's __init__ fills in."""
    return types.SimpleNamespace(path=str(MODULE_FILE), isEntered=True)
