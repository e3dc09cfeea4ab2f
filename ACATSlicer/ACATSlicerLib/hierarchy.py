"""The subject-hierarchy folder that groups the results of one input + model + method.

The folder sits beside the input in its study (loaded from DICOM: under the patient's study; loaded
from a file: at the top of the scene) and is named after the input node's name, which the user
controls, and the model and method - never after patient data. Explaining the same input with the
same model and method again replaces the folder and its nodes instead of piling up copies.
"""

from __future__ import annotations

import vtk

import slicer

RESULT_KEY_ATTRIBUTE = "ACAT.ResultKey"


def subjectHierarchy(scene):
    node = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if node is None:
        raise RuntimeError("the scene has no subject hierarchy")
    return node


def resultKey(inputNode, modelId: str, method: str) -> str:
    """Identifies one input + model + method (the node ID, not its name: names can repeat)."""
    return f"{inputNode.GetID()}|{modelId}|{method}"


def resultFolderName(inputNode, modelId: str, method: str) -> str:
    return f"{inputNode.GetName()} - ACAT {modelId} {method}"


def findResultFolders(scene, key: str = "") -> list[int]:
    """Subject-hierarchy items of ACAT result folders (all, or those of ``key``)."""
    sh = subjectHierarchy(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), children, True)
    found = []
    for n in range(children.GetNumberOfIds()):
        item = children.GetId(n)
        value = sh.GetItemAttribute(item, RESULT_KEY_ATTRIBUTE)
        if value and (not key or value == key):
            found.append(item)
    return found


def removeResultFolder(scene, folderItem: int) -> None:
    """Remove the folder, every item under it, their data nodes and the nodes those own (display and
    storage nodes: the scene would otherwise keep them as orphans)."""
    if not folderItem:
        return
    sh = subjectHierarchy(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(folderItem, children, True)
    for n in range(children.GetNumberOfIds()):
        node = sh.GetItemDataNode(children.GetId(n))
        if node is not None:
            removeOwnedNodes(scene, node)
    sh.RemoveItem(folderItem, True, True)


def removeOwnedNodes(scene, node) -> None:
    """Remove the display and storage nodes of ``node`` (not ``node`` itself)."""
    owned = []
    if node.IsA("vtkMRMLDisplayableNode"):
        owned += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        owned += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    for other in owned:
        if other is not None:
            scene.RemoveNode(other)


def createResultFolder(scene, inputNode, modelId: str, method: str) -> int:
    """A new folder for these results beside the input, replacing any earlier one with the same key."""
    sh = subjectHierarchy(scene)
    key = resultKey(inputNode, modelId, method)
    for old in findResultFolders(scene, key):
        removeResultFolder(scene, old)
    inputItem = sh.GetItemByDataNode(inputNode)
    parent = sh.GetItemParent(inputItem) if inputItem else sh.GetSceneItemID()
    folder = sh.CreateFolderItem(parent or sh.GetSceneItemID(), resultFolderName(inputNode, modelId, method))
    sh.SetItemAttribute(folder, RESULT_KEY_ATTRIBUTE, key)
    return folder


def placeInFolder(scene, node, folderItem: int) -> None:
    sh = subjectHierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(folderItem, node)
    sh.SetItemParent(item, folderItem)


def nodesInFolder(scene, folderItem: int) -> list:
    """The data nodes directly under ``folderItem``, in hierarchy order."""
    sh = subjectHierarchy(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(folderItem, children, False)
    nodes = [sh.GetItemDataNode(children.GetId(n)) for n in range(children.GetNumberOfIds())]
    return [n for n in nodes if n is not None]
