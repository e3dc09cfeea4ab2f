"""Where each Slicer, CTK, Qt and PyTorch-extension API the module uses is defined, in each supported version.

Reads git clones of Slicer (github.com/Slicer/Slicer), CTK (github.com/commontk/CTK) and SlicerPyTorch
(github.com/fepegar/SlicerPyTorch) - nothing is copied from them - and prints the markdown table of
ACATSlicer/SLICER_API.md: for each API, the file and line that define it at each Slicer ref (and at the CTK
commit that ref builds), or MISSING. A Qt API is shown by a line of Slicer's own Python that uses the same
API through PythonQt at that ref ("used at"): Qt's source is not read. Exit status 1 if anything is missing.

Testing/test_slicer_api_table.py fails when the module uses a Slicer/Qt/CTK/MRML API that is not in APIS.

    python Utilities/check_slicer_api.py SLICER_GIT CTK_GIT PYTORCH_GIT [--refs v5.10.0 v5.12.3 main]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from typing import NamedTuple

class API(NamedTuple):
    """One API the module uses. ``name``: as Testing/test_slicer_api_table.py extracts it from the module's code
    (``slicer.util.loadUI``, ``vtkMRMLScene.GetNodeByID``, ``qt.QComboBox.findData``); ``repo``: where it is
    checked; ``pattern``: a regular expression of its definition in ``path`` - or, for a Qt API (Qt's source is
    not one of the repositories read here), of a use of the same API by Slicer's own Python through PythonQt
    (``uses``)."""

    name: str
    repo: str
    path: str
    pattern: str
    uses: bool = False


S, C, P = "Slicer", "CTK", "SlicerPyTorch"
REPOSITORIES = (S, C, P)
UTIL, SLM = "Base/Python/slicer/util.py", "Base/Python/slicer/ScriptedLoadableModule.py"
MRML = "Libs/MRML/Core/"
SH = MRML + "vtkMRMLSubjectHierarchyNode.h"
PLOT_CHART, PLOT_SERIES = MRML + "vtkMRMLPlotChartNode.h", MRML + "vtkMRMLPlotSeriesNode.h"
SCALAR_DISPLAY, COMPOSITE = MRML + "vtkMRMLScalarVolumeDisplayNode.h", MRML + "vtkMRMLSliceCompositeNode.h"
SCENE, NODE = MRML + "vtkMRMLScene.h", MRML + "vtkMRMLNode.h"
NODE_COMBO = "Libs/MRML/Widgets/qMRMLNodeComboBox.h"


def _set(member: str) -> str:
    """A VTK setter: declared, or made by vtkSetMacro / vtkSetStringMacro / vtkSetVector2Macro."""
    return rf"(void Set{member}\(|vtkSet(String|Vector\d)?Macro\({member}[,)])"


def _get(member: str) -> str:
    return rf"(Get{member}\(\)|vtkGet(String|Object|Vector\d)?Macro\({member}\b)"


def _q(name: str, path: str, pattern: str) -> API:
    return API(name, S, path, pattern, uses=True)


APIS = [
    # the application (qSlicerCoreApplication) and the module's Qt parents
    API("slicer.app.majorVersion", S, "Base/QTCore/qSlicerCoreApplication.h", r"Q_PROPERTY\(int majorVersion"),
    API("slicer.app.minorVersion", S, "Base/QTCore/qSlicerCoreApplication.h", r"Q_PROPERTY\(int minorVersion"),
    API("slicer.app.cachePath", S, "Base/QTCore/qSlicerCoreApplication.h", r"Q_PROPERTY\(QString cachePath"),
    API("slicer.app.userSettings", S, "Base/QTCore/qSlicerCoreApplication.h", r"QSettings\* userSettings\(\)"),
    API("slicer.app.connect", S, "Base/QTGUI/qSlicerApplication.h", r"void startupCompleted\(\)"),
    API("slicer.app.processEvents", S, "Base/QTCore/qSlicerBaseQTCorePythonQtDecorators.h",
        r"void processEvents\(qSlicerCoreApplication\* app\)"),
    API("slicer.mrmlScene", S, "Base/Python/slicer/slicerqt.py|Base/Python/slicerqt.py",
        r"setattr\(slicer, \"mrmlScene\""),
    API("qSlicerScriptedLoadableModule.title", S, "Base/QTGUI/qSlicerScriptedLoadableModule.h",
        r"Q_PROPERTY\(QString title READ title WRITE setTitle"),
    API("qSlicerScriptedLoadableModule.categories", S, "Base/QTGUI/qSlicerScriptedLoadableModule.h",
        r"Q_PROPERTY\(QStringList categories READ categories WRITE"),
    API("qSlicerScriptedLoadableModule.contributors", S, "Base/QTGUI/qSlicerScriptedLoadableModule.h",
        r"Q_PROPERTY\(QStringList contributors READ contributors WRITE"),
    API("qSlicerScriptedLoadableModule.helpText", S, "Base/QTGUI/qSlicerScriptedLoadableModule.h",
        r"Q_PROPERTY\(QString helpText READ helpText WRITE"),
    API("qSlicerScriptedLoadableModule.acknowledgementText", S, "Base/QTGUI/qSlicerScriptedLoadableModule.h",
        r"Q_PROPERTY\(QString acknowledgementText READ acknowledgementText WRITE"),
    API("qSlicerScriptedLoadableModule.dependencies", S, "Base/QTGUI/qSlicerScriptedLoadableModule.h",
        r"Q_PROPERTY\(QStringList dependencies READ dependencies WRITE"),
    API("qSlicerAbstractModuleWidget.isEntered", S, "Base/QTGUI/qSlicerAbstractModuleWidget.h",
        r"Q_PROPERTY\(bool isEntered"),
    API("qMRMLWidget.setMRMLScene", S, "Libs/MRML/Widgets/qMRMLWidget.h", r"void setMRMLScene\("),
    API("qMRMLNodeComboBox.currentNodeChanged", S, NODE_COMBO, r"void currentNodeChanged\(vtkMRMLNode\*"),
    API("qMRMLNodeComboBox.setCurrentNode", S, NODE_COMBO, r"void setCurrentNode\(vtkMRMLNode\*"),
    API("qMRMLNodeComboBox.currentNode", S, NODE_COMBO, r"vtkMRMLNode\* currentNode\(\) const"),
    API("ctkSliderWidget.valueChanged", C, "Libs/Widgets/ctkSliderWidget.h", r"void valueChanged\(double"),
    API("ctkSliderWidget.value", C, "Libs/Widgets/ctkSliderWidget.h", r"Q_PROPERTY\(double value READ value"),
    API("ctkCollapsibleButton.collapsed", C, "Libs/Widgets/ctkCollapsibleButton.h", r"Q_PROPERTY\(bool collapsed"),
    # Qt through PythonQt: where Slicer's own Python uses the same API
    _q("qt.QTimer", "Modules/Scripted/DICOM/DICOM.py", r"= qt\.QTimer\(\)"),
    _q("qt.QTimer.setInterval", "Modules/Scripted/DICOM/DICOM.py", r"Timer\.setInterval\("),
    _q("qt.QTimer.start", "Modules/Scripted/DICOM/DICOM.py", r"Timer\.start\(\)"),
    _q("qt.QTimer.stop", "Modules/Scripted/DICOMLib/DICOMProcesses.py", r"Timer\.stop\(\)"),
    _q("qt.QObject.connect", "Modules/Scripted/DICOM/DICOM.py", r"Timer\.connect\(\"timeout\(\)\""),
    _q("qt.QObject.disconnect", UTIL, r"widget\.disconnect\(\"valueChanged\(int\)\""),
    _q("qt.QObject.blockSignals", "Modules/Scripted/DICOM/DICOM.py", r"\.blockSignals\(True\)"),
    _q("qt.QObject.className", UTIL, r"widgetClassName = widget\.className\(\)"),
    _q("qt.QObject.objectName", SLM, r"defaultAction\(\)\.objectName"),
    _q("qt.QObject.property", "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py",
       r"s\.property\(prop\) is not None"),
    _q("qt.QLabel", "Modules/Scripted/DICOMLib/DICOMBrowser.py", r"= qt\.QLabel\("),
    _q("qt.QLabel.wordWrap", "Modules/Scripted/DICOMLib/DICOMBrowser.py", r"label\.wordWrap = True"),
    _q("qt.QLabel.text", SLM, r"self\.reloadCollapsibleButton\.text = "),
    _q("qt.QWidget.enabled", "Modules/Scripted/CropVolumeSequence/CropVolumeSequence.py", r"\.enabled = "),
    _q("qt.QWidget.toolTip", SLM, r"self\.reloadButton\.toolTip = "),
    _q("qt.QWidget.visible", "Modules/Scripted/DICOMLib/DICOMBrowser.py", r"\.visible = "),
    _q("qt.QLayout.addWidget", SLM, r"self\.layout\.addWidget\("),
    _q("qt.QFileDialog.getExistingDirectory", "Modules/Scripted/ExtensionWizard/ExtensionWizard.py",
       r"qt\.QFileDialog\.getExistingDirectory\("),
    _q("qt.QComboBox.addItem", "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py",
       r"self\._widget\.addItem\("),
    _q("qt.QComboBox.clear", "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py",
       r"self\._widget\.clear\(\)"),
    _q("qt.QComboBox.findData", "Modules/Scripted/VectorToScalarVolume/VectorToScalarVolume.py", r"\.findData\("),
    _q("qt.QComboBox.findText", "Applications/SlicerApp/Testing/Python/ShaderProperties.py|"
       "Applications/SlicerApp/Testing/Python/ShaderPropertiesTest.py",
       r"methodComboBox\.findText\("),
    _q("qt.QComboBox.setCurrentIndex", "Modules/Scripted/VectorToScalarVolume/VectorToScalarVolume.py",
       r"\.setCurrentIndex\("),
    _q("qt.QComboBox.currentData", "Modules/Scripted/ScreenCapture/ScreenCapture.py", r"Widget\.currentData\b"),
    _q("qt.QComboBox.currentText", "Base/Python/slicer/tests/test_slicer_parameter_node_wrapper_guis.py",
       r"comboboxAlpha\.currentText, "),
    _q("qt.QAbstractButton.checked", "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py",
       r"self\._widget\.checked\b"),
    _q("qt.QSpinBox.value", "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py",
       r"self\._widget\.value = "),
    _q("qt.QProgressDialog.labelText", UTIL, r"progressIndicator\.labelText = labelText"),
    _q("qt.QProgressDialog.wasCanceled", "Modules/Scripted/DICOMLib/DICOMBrowser.py", r"progressDialog\.wasCanceled"),
    _q("qt.QProgressDialog.close", "Modules/Scripted/DICOMLib/DICOMBrowser.py", r"progressDialog\.close\(\)"),
    _q("qt.QSettings.value", SLM, r"userSettings\(\)\.value\("),
    _q("qt.QSettings.setValue", "Modules/Scripted/WebServer/WebServer.py", r"userSettings\(\)\.setValue\("),
    # slicer.util
    API("slicer.util.loadUI", S, UTIL, r"^def loadUI\("),
    API("slicer.util.childWidgetVariables", S, UTIL, r"^def childWidgetVariables\("),
    API("slicer.util.addParameterEditWidgetConnections", S, UTIL, r"^def addParameterEditWidgetConnections\("),
    API("slicer.util.tryWithErrorDisplay", S, UTIL,
        r"^def tryWithErrorDisplay\(message=None, show=True, waitCursor=False\)"),
    API("slicer.util.confirmOkCancelDisplay", S, UTIL, r"^def confirmOkCancelDisplay\(text, windowTitle=None"),
    API("slicer.util.confirmYesNoDisplay", S, UTIL, r"^def confirmYesNoDisplay\(text, windowTitle=None"),
    API("slicer.util.errorDisplay", S, UTIL, r"^def errorDisplay\(text"),
    API("slicer.util.createProgressDialog", S, UTIL, r"^def createProgressDialog\(parent=None, value=0, maximum=100"),
    API("slicer.util.pip_install", S, UTIL, r"^def pip_install\(requirements"),
    API("slicer.util.delayDisplay", S, UTIL, r"^def delayDisplay\(message, autoCloseMsec"),
    API("slicer.util.arrayFromVolume", S, UTIL, r"^def arrayFromVolume\(volumeNode"),
    API("slicer.util.updateVolumeFromArray", S, UTIL, r"^def updateVolumeFromArray\("),
    API("slicer.util.vtkMatrixFromArray", S, UTIL, r"^def vtkMatrixFromArray\("),
    API("slicer.util.NodeModify", S, UTIL, r"^class NodeModify"),
    API("slicer.util.VTKObservationMixin", S, UTIL, r"^class VTKObservationMixin"),
    API("slicer.util.VTKObservationMixin.addObserver", S, UTIL, r"    def addObserver\(self, obj, event, method"),
    API("slicer.util.VTKObservationMixin.removeObserver", S, UTIL,
        r"    def removeObserver\(self, obj, event, method\)"),
    API("slicer.util.VTKObservationMixin.removeObservers", S, UTIL, r"    def removeObservers\(self, method=None\)"),
    API("slicer.i18n.tr", S, "Base/Python/slicer/i18n.py", r"^def tr\(text"),
    API("slicer.i18n.translate", S, "Base/Python/slicer/i18n.py", r"^def translate\(context, text"),
    # the scripted-module base classes
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModule", S, SLM, r"^class ScriptedLoadableModule:"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModule.parent", S, SLM, r"^        self\.parent = parent$"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget", S, SLM, r"^class ScriptedLoadableModuleWidget:"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget.setup", S, SLM, r"^    def setup\(self\):"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget.layout", S, SLM,
        r"self\.layout = self\.parent\.layout\(\)"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget.resourcePath", S, SLM,
        r"^    def resourcePath\(self, filename\)"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic", S, SLM, r"^class ScriptedLoadableModuleLogic:"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModuleLogic.getParameterNode", S, SLM,
        r"GetSingletonNode\(self\.moduleName, \"vtkMRMLScriptedModuleNode\"\)"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest", S, SLM,
        r"^class ScriptedLoadableModuleTest\(unittest\.TestCase\):"),
    API("slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest.delayDisplay", S, SLM,
        r"def delayDisplay\(self, message"),
    # Sample Data and DICOM
    API("SampleData.SampleDataLogic.registerCustomSampleDataSource", S, "Modules/Scripted/SampleData/SampleData.py",
        r"def registerCustomSampleDataSource\("),
    API("DICOMLib.DICOMUtils.TemporaryDICOMDatabase", S, "Modules/Scripted/DICOMLib/DICOMUtils.py",
        r"^class TemporaryDICOMDatabase"),
    API("DICOMLib.DICOMUtils.importDicom", S, "Modules/Scripted/DICOMLib/DICOMUtils.py",
        r"^def importDicom\(dicomDataDir, dicomDatabase=None"),
    API("DICOMLib.DICOMUtils.loadSeriesByUID", S, "Modules/Scripted/DICOMLib/DICOMUtils.py",
        r"^def loadSeriesByUID\(seriesUIDs"),
    # the DICOM results: the volume's source series in the DICOM database (ACATSlicerLib/dicom_source.py)
    API("DICOM.instanceUIDs", S, "Modules/Scripted/DICOMPlugins/DICOMScalarVolumePlugin.py",
        r'volumeNode\.SetAttribute\("DICOM\.instanceUIDs"'),
    API("slicer.dicomDatabase", S, "Modules/Scripted/DICOM/DICOM.py",
        r"slicer\.dicomDatabase = slicer\.app\.dicomDatabase\(\)"),
    API("ctkDICOMDatabase.fileForInstance", C, "Libs/DICOM/Core/ctkDICOMDatabase.h",
        r"QString fileForInstance\(const QString sopInstanceUID\)"),
    # MRML: the scene
    API("vtkMRMLScene.AddNewNodeByClass", S, SCENE, r"vtkMRMLNode\* AddNewNodeByClass\("),
    API("vtkMRMLScene.GetSingletonNode", S, SCENE, r"vtkMRMLNode\* GetSingletonNode\(const char\* singletonTag"),
    API("vtkMRMLScene.GetFirstNodeByClass", S, SCENE, r"vtkMRMLNode\* GetFirstNodeByClass\(const char\* className\)"),
    API("vtkMRMLScene.GetFirstNode", S, SCENE, r"vtkMRMLNode\* GetFirstNode\(const char\* byName"),
    API("vtkMRMLScene.GetNthNodeByClass", S, SCENE,
        r"vtkMRMLNode\* GetNthNodeByClass\(int n, const char\* className\)"),
    API("vtkMRMLScene.GetNumberOfNodesByClass", S, SCENE, r"int GetNumberOfNodesByClass\(const char\* className\)"),
    API("vtkMRMLScene.GetNumberOfNodes", S, SCENE, r"int GetNumberOfNodes\(\)"),
    API("vtkMRMLScene.GetNodeByID", S, SCENE, r"vtkMRMLNode\* GetNodeByID\(const char\* "),
    API("vtkMRMLScene.RemoveNode", S, SCENE, r"void RemoveNode\(vtkMRMLNode\* "),
    API("vtkMRMLScene.Clear", S, SCENE, r"void Clear\(int removeSingletons"),
    API("vtkMRMLScene.StartCloseEvent", S, SCENE, r"^\s*StartCloseEvent = "),
    API("vtkMRMLScene.EndCloseEvent", S, SCENE, r"^\s*EndCloseEvent = "),
    # MRML: every node
    API("vtkMRMLNode.GetID", S, NODE, _get("ID")),
    API("vtkMRMLNode.GetName", S, NODE, _get("Name")),
    API("vtkMRMLNode.GetScene", S, NODE, r"virtual vtkMRMLScene\* GetScene\(\)"),
    API("vtkMRMLNode.GetAttribute", S, NODE, r"const char\* GetAttribute\(const char\* name\)"),
    API("vtkMRMLNode.SetAttribute", S, NODE, r"void SetAttribute\(const char\* name, const char\* value\)"),
    API("vtkMRMLNode.SetNodeReferenceID", S, NODE,
        r"vtkMRMLNode\* SetNodeReferenceID\(const char\* referenceRole, const char\* referencedNodeID\)"),
    API("vtkMRMLNode.GetNodeReference", S, NODE, r"vtkMRMLNode\* GetNodeReference\(const char\* referenceRole\)"),
    API("vtkMRMLNode.StartModify", S, NODE, r"virtual int StartModify\(\)"),
    API("vtkMRMLNode.EndModify", S, NODE, r"virtual int EndModify\(int previousDisableModifiedEventState\)"),
    API("vtkMRMLScriptedModuleNode.SetParameter", S, MRML + "vtkMRMLScriptedModuleNode.h",
        r"void SetParameter\(const std::string& name, const std::string& value\)"),
    API("vtkMRMLScriptedModuleNode.GetParameter", S, MRML + "vtkMRMLScriptedModuleNode.h",
        r"std::string GetParameter\(const std::string& name\) const"),
    API("vtkMRMLScriptedModuleNode.GetParameterNames", S, MRML + "vtkMRMLScriptedModuleNode.h",
        r"std::vector<std::string> GetParameterNames\(\)"),
    API("vtkMRMLDisplayableNode.SetAndObserveDisplayNodeID", S, MRML + "vtkMRMLDisplayableNode.h",
        r"void SetAndObserveDisplayNodeID\("),
    API("vtkMRMLDisplayableNode.GetDisplayNode", S, MRML + "vtkMRMLDisplayableNode.h",
        r"vtkMRMLDisplayNode\* GetDisplayNode\(\)"),
    API("vtkMRMLDisplayableNode.GetNthDisplayNode", S, MRML + "vtkMRMLDisplayableNode.h",
        r"vtkMRMLDisplayNode\* GetNthDisplayNode\(int n\)"),
    API("vtkMRMLDisplayableNode.GetNumberOfDisplayNodes", S, MRML + "vtkMRMLDisplayableNode.h",
        r"int GetNumberOfDisplayNodes\(\)"),
    API("vtkMRMLDisplayableNode.CreateDefaultDisplayNodes", S, MRML + "vtkMRMLDisplayableNode.h",
        r"virtual void CreateDefaultDisplayNodes\(\)"),
    API("vtkMRMLStorableNode.GetNthStorageNode", S, MRML + "vtkMRMLStorableNode.h",
        r"vtkMRMLStorageNode\* GetNthStorageNode\(int n\)"),
    API("vtkMRMLStorableNode.GetNumberOfStorageNodes", S, MRML + "vtkMRMLStorableNode.h",
        r"int GetNumberOfStorageNodes\(\)"),
    API("vtkMRMLTransformableNode.SetAndObserveTransformNodeID", S, MRML + "vtkMRMLTransformableNode.h",
        r"bool SetAndObserveTransformNodeID\(const char\* transformNodeID\)"),
    API("vtkMRMLTransformableNode.GetTransformNodeID", S, MRML + "vtkMRMLTransformableNode.h",
        r"const char\* GetTransformNodeID\(\)"),
    # MRML: volumes and their display
    API("vtkMRMLVolumeNode.SetAndObserveImageData", S, MRML + "vtkMRMLVolumeNode.h",
        r"virtual void SetAndObserveImageData\(vtkImageData\* "),
    API("vtkMRMLVolumeNode.GetImageData", S, MRML + "vtkMRMLVolumeNode.h", r"virtual vtkImageData\* GetImageData\(\)"),
    API("vtkMRMLVolumeNode.SetIJKToRASMatrix", S, MRML + "vtkMRMLVolumeNode.h",
        r"void SetIJKToRASMatrix\(vtkMatrix4x4\* "),
    API("vtkMRMLVolumeNode.GetIJKToRASMatrix", S, MRML + "vtkMRMLVolumeNode.h",
        r"void GetIJKToRASMatrix\(vtkMatrix4x4\* "),
    API("vtkMRMLDisplayNode.SetAndObserveColorNodeID", S, MRML + "vtkMRMLDisplayNode.h",
        r"virtual void SetAndObserveColorNodeID\(const char\* "),
    API("vtkMRMLDisplayNode.GetColorNodeID", S, MRML + "vtkMRMLDisplayNode.h", _get("ColorNodeID")),
    API("vtkMRMLScalarVolumeDisplayNode.SetApplyThreshold", S, SCALAR_DISPLAY,
        r"virtual void SetApplyThreshold\(int\)"),
    API("vtkMRMLScalarVolumeDisplayNode.SetAutoThreshold", S, SCALAR_DISPLAY, _set("AutoThreshold")),
    API("vtkMRMLScalarVolumeDisplayNode.SetLowerThreshold", S, SCALAR_DISPLAY, r"void SetLowerThreshold\(double "),
    API("vtkMRMLScalarVolumeDisplayNode.SetUpperThreshold", S, SCALAR_DISPLAY, r"void SetUpperThreshold\(double "),
    API("vtkMRMLScalarVolumeDisplayNode.SetAutoWindowLevel", S, SCALAR_DISPLAY, _set("AutoWindowLevel")),
    API("vtkMRMLScalarVolumeDisplayNode.SetWindowLevelMinMax", S, SCALAR_DISPLAY,
        r"void SetWindowLevelMinMax\(double min, double max\)"),
    API("vtkMRMLScalarVolumeDisplayNode.GetWindowLevelMin", S, SCALAR_DISPLAY, r"double GetWindowLevelMin\(\)"),
    API("vtkMRMLScalarVolumeDisplayNode.GetWindowLevelMax", S, SCALAR_DISPLAY, r"double GetWindowLevelMax\(\)"),
    # MRML: views and layout
    API("vtkMRMLSliceCompositeNode.SetBackgroundVolumeID", S, COMPOSITE, r"void SetBackgroundVolumeID\(const char\* "),
    API("vtkMRMLSliceCompositeNode.GetBackgroundVolumeID", S, COMPOSITE, r"const char\* GetBackgroundVolumeID\(\)"),
    API("vtkMRMLSliceCompositeNode.SetForegroundVolumeID", S, COMPOSITE, r"void SetForegroundVolumeID\(const char\* "),
    API("vtkMRMLSliceCompositeNode.GetForegroundVolumeID", S, COMPOSITE, r"const char\* GetForegroundVolumeID\(\)"),
    API("vtkMRMLSliceCompositeNode.SetForegroundOpacity", S, COMPOSITE, r"void SetForegroundOpacity\(double "),
    API("vtkMRMLSliceCompositeNode.SetLinkedControl", S, COMPOSITE, _set("LinkedControl")),
    API("vtkMRMLSliceNode.SetOrientation", S, MRML + "vtkMRMLSliceNode.h",
        r"bool SetOrientation\(const char\* orientation\)"),
    API("vtkMRMLAbstractViewNode.GetLayoutName", S, MRML + "vtkMRMLAbstractViewNode.h",
        r"const char\* GetLayoutName\(\)"),
    API("vtkMRMLLayoutNode.SetViewArrangement", S, MRML + "vtkMRMLLayoutNode.h",
        r"virtual void SetViewArrangement\(int"),
    API("vtkMRMLLayoutNode.AddLayoutDescription", S, MRML + "vtkMRMLLayoutNode.h",
        r"bool AddLayoutDescription\(int layout, const char\* layoutDescription\)"),
    API("vtkMRMLLayoutNode.IsLayoutDescription", S, MRML + "vtkMRMLLayoutNode.h",
        r"bool IsLayoutDescription\(int layout\)"),
    API("vtkMRMLLayoutNode.SlicerLayoutSideBySideView", S, MRML + "vtkMRMLLayoutNode.h",
        r"SlicerLayoutSideBySideView = "),
    # MRML: plots, tables, text
    API("vtkMRMLPlotViewNode.SetPlotChartNodeID", S, MRML + "vtkMRMLPlotViewNode.h", r"void SetPlotChartNodeID\("),
    API("vtkMRMLPlotChartNode.AddAndObservePlotSeriesNodeID", S, PLOT_CHART,
        r"void AddAndObservePlotSeriesNodeID\(const char\* plotSeriesNodeID\)"),
    API("vtkMRMLPlotChartNode.SetTitle", S, PLOT_CHART, _set("Title")),
    API("vtkMRMLPlotChartNode.SetXAxisTitle", S, PLOT_CHART, _set("XAxisTitle")),
    API("vtkMRMLPlotChartNode.SetYAxisTitle", S, PLOT_CHART, _set("YAxisTitle")),
    API("vtkMRMLPlotChartNode.SetYAxisRange", S, PLOT_CHART, _set("YAxisRange")),
    API("vtkMRMLPlotChartNode.SetYAxisRangeAuto", S, PLOT_CHART, _set("YAxisRangeAuto")),
    API("vtkMRMLPlotSeriesNode.SetAndObserveTableNodeID", S, PLOT_SERIES,
        r"virtual void SetAndObserveTableNodeID\(const char\* tableNodeID\)"),
    API("vtkMRMLPlotSeriesNode.GetTableNode", S, PLOT_SERIES, r"virtual vtkMRMLTableNode\* GetTableNode\(\)"),
    API("vtkMRMLPlotSeriesNode.SetXColumnName", S, PLOT_SERIES, r"vtkSetMacro\(XColumnName, std::string\)"),
    API("vtkMRMLPlotSeriesNode.GetXColumnName", S, PLOT_SERIES, r"vtkGetMacro\(XColumnName, std::string\)"),
    API("vtkMRMLPlotSeriesNode.SetYColumnName", S, PLOT_SERIES, r"vtkSetMacro\(YColumnName, std::string\)"),
    API("vtkMRMLPlotSeriesNode.GetYColumnName", S, PLOT_SERIES, r"vtkGetMacro\(YColumnName, std::string\)"),
    API("vtkMRMLPlotSeriesNode.SetPlotType", S, PLOT_SERIES, r"vtkSetMacro\(PlotType, int\)"),
    API("vtkMRMLPlotSeriesNode.PlotTypeScatter", S, PLOT_SERIES, r"^\s*PlotTypeScatter,"),
    API("vtkMRMLPlotSeriesNode.SetMarkerStyle", S, PLOT_SERIES, r"vtkSetMacro\(MarkerStyle, int\)"),
    API("vtkMRMLPlotSeriesNode.MarkerStyleCircle", S, PLOT_SERIES, r"^\s*MarkerStyleCircle,"),
    API("vtkMRMLPlotSeriesNode.SetColor", S, PLOT_SERIES, r"vtkSetVector3Macro\(Color, double\)"),
    API("vtkMRMLTableNode.SetAndObserveTable", S, MRML + "vtkMRMLTableNode.h",
        r"virtual void SetAndObserveTable\(vtkTable\* "),
    API("vtkMRMLTableNode.GetTable", S, MRML + "vtkMRMLTableNode.h", r"vtkGetObjectMacro\(Table, vtkTable\)"),
    API("vtkMRMLTableNode.SetUseColumnTitleAsColumnHeader", S, MRML + "vtkMRMLTableNode.h",
        r"vtkSetMacro\(UseColumnTitleAsColumnHeader, bool\)"),
    API("vtkMRMLTextNode.SetText", S, MRML + "vtkMRMLTextNode.h", r"void SetText\(const std::string& text"),
    API("vtkMRMLTextNode.GetText", S, MRML + "vtkMRMLTextNode.h", r"vtkGetMacro\(Text, std::string\)"),
    # MRML: subject hierarchy
    API("vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode", S, SH,
        r"static vtkMRMLSubjectHierarchyNode\* GetSubjectHierarchyNode\(vtkMRMLScene\* scene\)"),
    API("vtkMRMLSubjectHierarchyNode.GetSceneItemID", S, SH, r"vtkIdType GetSceneItemID\(\)"),
    API("vtkMRMLSubjectHierarchyNode.CreateFolderItem", S, SH,
        r"vtkIdType CreateFolderItem\(vtkIdType parentItemID, std::string name"),
    API("vtkMRMLSubjectHierarchyNode.CreateItem", S, SH,
        r"vtkIdType CreateItem\(vtkIdType parentItemID, vtkMRMLNode\* dataNode"),
    API("vtkMRMLSubjectHierarchyNode.GetItemByDataNode", S, SH,
        r"vtkIdType GetItemByDataNode\(vtkMRMLNode\* dataNode\)"),
    API("vtkMRMLSubjectHierarchyNode.GetItemDataNode", S, SH, r"vtkMRMLNode\* GetItemDataNode\(vtkIdType itemID\)"),
    API("vtkMRMLSubjectHierarchyNode.GetItemChildren", S, SH,
        r"void GetItemChildren\(vtkIdType itemID, vtkIdList\* childIDs, bool recursive"),
    API("vtkMRMLSubjectHierarchyNode.GetItemParent", S, SH, r"vtkIdType GetItemParent\(vtkIdType itemID\)"),
    API("vtkMRMLSubjectHierarchyNode.SetItemParent", S, SH,
        r"void SetItemParent\(vtkIdType itemID, vtkIdType parentItemID"),
    API("vtkMRMLSubjectHierarchyNode.RemoveItem", S, SH, r"bool RemoveItem\(vtkIdType itemID, bool removeDataNode"),
    API("vtkMRMLSubjectHierarchyNode.SetItemAttribute", S, SH,
        r"void SetItemAttribute\(vtkIdType itemID, std::string attributeName, std::string attributeValue\)"),
    API("vtkMRMLSubjectHierarchyNode.GetItemAttribute", S, SH,
        r"std::string GetItemAttribute\(vtkIdType itemID, std::string attributeName\)"),
    # segmentations
    API("vtkMRMLSegmentationNode.GetSegmentation", S, MRML + "vtkMRMLSegmentationNode.h",
        r"vtkGetObjectMacro\(Segmentation, vtkSegmentation\)"),
    API("vtkSegmentation.GetNumberOfSegments", S, "Libs/vtkSegmentationCore/vtkSegmentation.h",
        r"int GetNumberOfSegments\(\) const"),
    API("vtkSegmentation.GetNthSegmentID", S, "Libs/vtkSegmentationCore/vtkSegmentation.h",
        r"std::string GetNthSegmentID\(unsigned int index\) const"),
    API("vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode", S,
        "Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.h",
        r"static bool ExportSegmentsToLabelmapNode\(vtkMRMLSegmentationNode\* segmentationNode,\s*vtkStringArray"),
    # the PyTorch extension
    API("PyTorchUtils.PyTorchUtilsLogic", P, "PyTorchUtils/PyTorchUtils.py", r"^class PyTorchUtilsLogic"),
    API("PyTorchUtils.PyTorchUtilsLogic.installTorch", P, "PyTorchUtils/PyTorchUtils.py",
        r"def installTorch\(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None"),
]


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True).stdout


def ctk_commit(slicer: str, ref: str) -> str:
    text = git(slicer, "show", f"{ref}:SuperBuild/External_CTK.cmake")
    match = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*\n\s*"([0-9a-f]{40})"', text)
    return match.group(1) if match else "HEAD"


def where(repo: str, ref: str, path: str, pattern: str) -> str:
    """``path:line`` of the first line matching ``pattern``; ``path`` may name the file as it moved, "a|b"."""
    candidates = path.split("|")
    texts = [(p, git(repo, "show", f"{ref}:{p}")) for p in candidates]
    path, text = next(((p, t) for p, t in texts if t), (candidates[0], ""))
    if not text:
        return "MISSING (no file)"
    if "\\s" in pattern:  # a definition over several lines
        match = re.search(pattern, text, re.M)
        return f"{path}:{text.count(chr(10), 0, match.start()) + 1}" if match else "MISSING"
    for number, line in enumerate(text.splitlines(), 1):
        if re.search(pattern, line):
            return f"{path}:{number}"
    return "MISSING"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slicer")
    parser.add_argument("ctk")
    parser.add_argument("pytorch")
    parser.add_argument("--refs", nargs="+", default=["v5.10.0", "v5.12.3", "main"])
    args = parser.parse_args(argv)
    repos = {S: args.slicer, C: args.ctk, P: args.pytorch}
    pytorch_ref = git(args.pytorch, "rev-parse", "--short", "HEAD").strip()
    headers = []
    for ref in args.refs:
        headers.append(f"Slicer {ref} ({git(args.slicer, 'rev-parse', '--short', ref).strip()}, CTK "
                       f"{ctk_commit(args.slicer, ref)[:8]})")
    print("| API | " + " | ".join(headers) + " |")
    print("|---|" + "---|" * len(headers))
    missing = 0
    for api in APIS:
        cells = []
        for ref in args.refs:
            at = {S: ref, C: ctk_commit(args.slicer, ref), P: "HEAD"}[api.repo]
            found = where(repos[api.repo], at, api.path, api.pattern)
            missing += found.startswith("MISSING")
            prefix = {P: f"SlicerPyTorch {pytorch_ref}: ", C: "CTK: ", S: ""}[api.repo]
            cells.append(prefix + ("used at " if api.uses and not found.startswith("MISSING") else "") + found)
        print(f"| `{api.name}` | " + " | ".join(cells) + " |")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
