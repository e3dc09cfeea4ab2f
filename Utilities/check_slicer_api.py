"""Where each Slicer, CTK and PyTorch-extension API the module uses is defined, in each supported version.

Reads git clones of Slicer (github.com/Slicer/Slicer), CTK (github.com/commontk/CTK) and SlicerPyTorch
(github.com/fepegar/SlicerPyTorch) - nothing is copied from them - and prints the markdown table of
ACATSlicer/SLICER_API.md: for each API, the file and line that define it at each Slicer ref (and at the CTK
commit that ref builds), or MISSING. Exit status 1 if anything is missing.

    python Utilities/check_slicer_api.py SLICER_GIT CTK_GIT PYTORCH_GIT [--refs v5.10.0 main]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

# (API as the module uses it, repository, file, regular expression of its definition)
S, C, P = "Slicer", "CTK", "SlicerPyTorch"
APIS = [
    # the application (qSlicerCoreApplication) and the module's panel
    ("slicer.app.majorVersion / minorVersion", S, "Base/QTCore/qSlicerCoreApplication.h", r"Q_PROPERTY\(int minorVersion"),
    ("slicer.app.cachePath", S, "Base/QTCore/qSlicerCoreApplication.h", r"Q_PROPERTY\(QString cachePath"),
    ("slicer.app.userSettings()", S, "Base/QTCore/qSlicerCoreApplication.h", r"QSettings\* userSettings\(\)"),
    ("slicer.app.connect('startupCompleted()')", S, "Base/QTGUI/qSlicerApplication.h", r"void startupCompleted\(\)"),
    ("self.parent.isEntered (qSlicerAbstractModuleWidget)", S, "Base/QTGUI/qSlicerAbstractModuleWidget.h",
     r"Q_PROPERTY\(bool isEntered"),
    ("qMRMLWidget.setMRMLScene", S, "Libs/MRML/Widgets/qMRMLWidget.h", r"void setMRMLScene\("),
    ("qMRMLNodeComboBox currentNodeChanged(vtkMRMLNode*)", S, "Libs/MRML/Widgets/qMRMLNodeComboBox.h",
     r"void currentNodeChanged\(vtkMRMLNode\*"),
    ("qMRMLNodeComboBox.setCurrentNode / currentNode()", S, "Libs/MRML/Widgets/qMRMLNodeComboBox.h",
     r"void setCurrentNode\(vtkMRMLNode\*"),
    ("ctkSliderWidget valueChanged(double), value", C, "Libs/Widgets/ctkSliderWidget.h", r"void valueChanged\(double"),
    ("ctkCollapsibleButton collapsed", C, "Libs/Widgets/ctkCollapsibleButton.h", r"Q_PROPERTY\(bool collapsed"),
    # slicer.util
    ("slicer.util.loadUI", S, "Base/Python/slicer/util.py", r"^def loadUI\("),
    ("slicer.util.childWidgetVariables", S, "Base/Python/slicer/util.py", r"^def childWidgetVariables\("),
    ("signal signatures of parameter widgets (QSpinBox valueChanged(int), ...)", S, "Base/Python/slicer/util.py",
     r"^def addParameterEditWidgetConnections\("),
    ("slicer.util.tryWithErrorDisplay(message, waitCursor)", S, "Base/Python/slicer/util.py",
     r"^def tryWithErrorDisplay\(message=None, show=True, waitCursor=False\)"),
    ("slicer.util.confirmOkCancelDisplay(text, windowTitle)", S, "Base/Python/slicer/util.py",
     r"^def confirmOkCancelDisplay\(text, windowTitle=None"),
    ("slicer.util.confirmYesNoDisplay(text, windowTitle)", S, "Base/Python/slicer/util.py",
     r"^def confirmYesNoDisplay\(text, windowTitle=None"),
    ("slicer.util.errorDisplay", S, "Base/Python/slicer/util.py", r"^def errorDisplay\(text"),
    ("slicer.util.createProgressDialog(parent, maximum, windowTitle)", S, "Base/Python/slicer/util.py",
     r"^def createProgressDialog\(parent=None, value=0, maximum=100"),
    ("slicer.util.pip_install", S, "Base/Python/slicer/util.py", r"^def pip_install\(requirements"),
    ("slicer.util.delayDisplay", S, "Base/Python/slicer/util.py", r"^def delayDisplay\(message"),
    ("slicer.util.arrayFromVolume (a view)", S, "Base/Python/slicer/util.py", r"^def arrayFromVolume\(volumeNode"),
    ("slicer.util.updateVolumeFromArray", S, "Base/Python/slicer/util.py", r"^def updateVolumeFromArray\("),
    ("slicer.util.vtkMatrixFromArray", S, "Base/Python/slicer/util.py", r"^def vtkMatrixFromArray\("),
    ("slicer.util.NodeModify", S, "Base/Python/slicer/util.py", r"^class NodeModify"),
    ("slicer.util.VTKObservationMixin", S, "Base/Python/slicer/util.py", r"^class VTKObservationMixin"),
    ("slicer.i18n.tr / translate", S, "Base/Python/slicer/i18n.py", r"^def tr\(text"),
    # the scripted-module base classes
    ("ScriptedLoadableModule", S, "Base/Python/slicer/ScriptedLoadableModule.py", r"^class ScriptedLoadableModule:"),
    ("ScriptedLoadableModuleWidget.resourcePath / layout", S, "Base/Python/slicer/ScriptedLoadableModule.py",
     r"self\.layout = self\.parent\.layout\(\)"),
    ("ScriptedLoadableModuleLogic.getParameterNode (singleton vtkMRMLScriptedModuleNode)", S,
     "Base/Python/slicer/ScriptedLoadableModule.py", r"GetSingletonNode\(self\.moduleName, \"vtkMRMLScriptedModuleNode\"\)"),
    ("ScriptedLoadableModuleTest.delayDisplay", S, "Base/Python/slicer/ScriptedLoadableModule.py",
     r"def delayDisplay\(self, message"),
    # Sample Data and DICOM
    ("SampleData.SampleDataLogic.registerCustomSampleDataSource", S, "Modules/Scripted/SampleData/SampleData.py",
     r"def registerCustomSampleDataSource\("),
    ("DICOMUtils.TemporaryDICOMDatabase", S, "Modules/Scripted/DICOMLib/DICOMUtils.py", r"^class TemporaryDICOMDatabase"),
    ("DICOMUtils.importDicom(folder, database)", S, "Modules/Scripted/DICOMLib/DICOMUtils.py",
     r"^def importDicom\(dicomDataDir, dicomDatabase=None"),
    ("DICOMUtils.loadSeriesByUID([uid]) -> node IDs", S, "Modules/Scripted/DICOMLib/DICOMUtils.py",
     r"^def loadSeriesByUID\(seriesUIDs"),
    # the DICOM results: the volume's source series in the DICOM database (ACATSlicerLib/dicom_source.py)
    ("DICOM.instanceUIDs (one SOP Instance UID per slice, set by the DICOM scalar volume plugin)", S,
     "Modules/Scripted/DICOMPlugins/DICOMScalarVolumePlugin.py", r'volumeNode\.SetAttribute\("DICOM\.instanceUIDs"'),
    ("slicer.dicomDatabase (set by the DICOM module)", S, "Modules/Scripted/DICOM/DICOM.py",
     r"slicer\.dicomDatabase = slicer\.app\.dicomDatabase\(\)"),
    ("slicer.dicomDatabase.fileForInstance(sopInstanceUID)", C, "Libs/DICOM/Core/ctkDICOMDatabase.h",
     r"QString fileForInstance\(const QString sopInstanceUID\)"),
    ("vtkMRMLNode GetAttribute", S, "Libs/MRML/Core/vtkMRMLNode.h", r"const char\* GetAttribute\(const char\* name\)"),
    # MRML
    ("vtkMRMLScriptedModuleNode Get/SetParameter, GetParameterNames", S, "Libs/MRML/Core/vtkMRMLScriptedModuleNode.h",
     r"std::vector<std::string> GetParameterNames\(\)"),
    ("vtkMRMLNode SetNodeReferenceID / GetNodeReference", S, "Libs/MRML/Core/vtkMRMLNode.h",
     r"vtkMRMLNode\* SetNodeReferenceID\(const char\* referenceRole, const char\* referencedNodeID\)"),
    ("vtkMRMLNode StartModify / EndModify", S, "Libs/MRML/Core/vtkMRMLNode.h", r"virtual int StartModify\(\)"),
    ("vtkMRMLScene GetSingletonNode", S, "Libs/MRML/Core/vtkMRMLScene.h", r"vtkMRMLNode\* GetSingletonNode\(const char\* singletonTag"),
    ("vtkMRMLScene AddNewNodeByClass", S, "Libs/MRML/Core/vtkMRMLScene.h", r"vtkMRMLNode\* AddNewNodeByClass\("),
    ("vtkMRMLScene StartCloseEvent / EndCloseEvent", S, "Libs/MRML/Core/vtkMRMLScene.h", r"StartCloseEvent"),
    ("vtkMRMLVolumeNode SetAndObserveImageData", S, "Libs/MRML/Core/vtkMRMLVolumeNode.h",
     r"virtual void SetAndObserveImageData\("),
    ("vtkMRMLVolumeNode Set/GetIJKToRASMatrix", S, "Libs/MRML/Core/vtkMRMLVolumeNode.h", r"void SetIJKToRASMatrix\("),
    ("vtkMRMLDisplayableNode SetAndObserveDisplayNodeID", S, "Libs/MRML/Core/vtkMRMLDisplayableNode.h",
     r"void SetAndObserveDisplayNodeID\("),
    ("vtkMRMLScalarVolumeDisplayNode SetApplyThreshold / Lower / UpperThreshold", S,
     "Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.h", r"void SetLowerThreshold\("),
    ("vtkMRMLScalarVolumeDisplayNode SetAutoWindowLevel / SetWindowLevelMinMax", S,
     "Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.h", r"void SetWindowLevelMinMax\("),
    ("vtkMRMLSliceCompositeNode Set{Background,Foreground}VolumeID, SetForegroundOpacity", S,
     "Libs/MRML/Core/vtkMRMLSliceCompositeNode.h", r"void SetForegroundOpacity\("),
    ("vtkMRMLSliceCompositeNode SetLinkedControl", S, "Libs/MRML/Core/vtkMRMLSliceCompositeNode.h",
     r"vtkSetMacro\(LinkedControl|SetLinkedControl"),
    ("vtkMRMLLayoutNode SlicerLayoutSideBySideView, AddLayoutDescription", S, "Libs/MRML/Core/vtkMRMLLayoutNode.h",
     r"SlicerLayoutSideBySideView"),
    ("vtkMRMLPlotViewNode SetPlotChartNodeID", S, "Libs/MRML/Core/vtkMRMLPlotViewNode.h", r"void SetPlotChartNodeID\("),
    ("vtkMRMLPlotSeriesNode PlotTypeScatter, MarkerStyleCircle", S, "Libs/MRML/Core/vtkMRMLPlotSeriesNode.h",
     r"MarkerStyleCircle"),
    ("vtkMRMLSubjectHierarchyNode CreateFolderItem / SetItemAttribute", S,
     "Libs/MRML/Core/vtkMRMLSubjectHierarchyNode.h", r"vtkIdType CreateFolderItem\("),
    ("vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode", S,
     "Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentationsModuleLogic.h",
     r"static bool ExportSegmentsToLabelmapNode\(vtkMRMLSegmentationNode\* segmentationNode,\s*vtkStringArray"),
    # the PyTorch extension
    ("PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation, torchVersionRequirement)", P,
     "PyTorchUtils/PyTorchUtils.py", r"def installTorch\(self, askConfirmation=False, forceComputationBackend=None, "
                                     r"torchVersionRequirement=None"),
]


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True).stdout


def ctk_commit(slicer: str, ref: str) -> str:
    text = git(slicer, "show", f"{ref}:SuperBuild/External_CTK.cmake")
    match = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*\n\s*"([0-9a-f]{40})"', text)
    return match.group(1) if match else "HEAD"


def where(repo: str, ref: str, path: str, pattern: str) -> str:
    text = git(repo, "show", f"{ref}:{path}")
    if not text:
        return "MISSING (no file)"
    if "\\s" in pattern:  # a definition over several lines
        match = re.search(pattern, text, re.M)
        return f"{path}:{text.count(chr(10), 0, match.start()) + 1}" if match else "MISSING"
    for number, line in enumerate(text.splitlines(), 1):
        if re.search(pattern, line):
            return f"{path}:{number}"
    return "MISSING"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slicer")
    parser.add_argument("ctk")
    parser.add_argument("pytorch")
    parser.add_argument("--refs", nargs="+", default=["v5.10.0", "main"])
    args = parser.parse_args()
    repos = {S: args.slicer, C: args.ctk, P: args.pytorch}
    pytorch_ref = git(args.pytorch, "rev-parse", "--short", "HEAD").strip()
    headers = []
    for ref in args.refs:
        headers.append(f"Slicer {ref} ({git(args.slicer, 'rev-parse', '--short', ref).strip()}, CTK "
                       f"{ctk_commit(args.slicer, ref)[:8]})")
    print("| API | " + " | ".join(headers) + " |")
    print("|---|" + "---|" * len(headers))
    missing = 0
    for api, repo, path, pattern in APIS:
        cells = []
        for ref in args.refs:
            at = {S: ref, C: ctk_commit(args.slicer, ref), P: "HEAD"}[repo]
            found = where(repos[repo], at, path, pattern)
            missing += found.startswith("MISSING")
            cells.append(("SlicerPyTorch " + pytorch_ref + ": " if repo == P else ("CTK: " if repo == C else ""))
                         + found)
        print(f"| `{api}` | " + " | ".join(cells) + " |")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
