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
    storage nodes: the scene would otherwise keep them as orphans).

    Order matters, twice:

    * the items are removed on their own (``removeDataNode`` False), then the data nodes: asked to remove
      the data nodes as well, ``RemoveItem`` removes the nodes but moves their items to the top of the
      hierarchy, where they stay as empty items;
    * the data nodes go before their display and storage nodes: a volume that a slice view shows (a
      composite node's background or foreground) gets a new default display node from the view's layer
      logic as soon as its display node is removed, and that one would outlive the volume."""
    if not folderItem:
        return
    sh = subjectHierarchy(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(folderItem, children, True)
    items = [folderItem] + [children.GetId(n) for n in range(children.GetNumberOfIds())]
    # the folder's own data node, if any, is the folder display node Slicer adds to show/colour a branch
    dataNodes = [node for node in map(sh.GetItemDataNode, items) if node is not None]
    owned = [other for node in dataNodes for other in ownedNodes(node)]
    sh.RemoveItem(folderItem, False, True)
    _removeNodes(scene, dataNodes)
    _removeNodes(scene, owned)


def ownedNodes(node) -> list:
    """The display and storage nodes of ``node``."""
    owned = []
    if node.IsA("vtkMRMLDisplayableNode"):
        owned += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        owned += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    return [other for other in owned if other is not None]


def _removeNodes(scene, nodes) -> None:
    for node in nodes:
        if node.GetScene() is scene:  # not already removed (e.g. shared by two data nodes)
            scene.RemoveNode(node)


def removeNodeAndOwned(scene, node) -> None:
    """Remove ``node``, its subject-hierarchy item (if it has one) and then its display and storage nodes
    (in this order: see `removeResultFolder`)."""
    owned = ownedNodes(node)
    sh = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode")  # not GetSubjectHierarchyNode: it adds one
    item = sh.GetItemByDataNode(node) if sh is not None else 0
    if item:
        sh.RemoveItem(item, False, False)
    _removeNodes(scene, [node])
    _removeNodes(scene, owned)


def removeOwnedNodes(scene, node) -> None:
    """Remove the display and storage nodes of ``node`` (not ``node`` itself).

    To remove a node with them use `removeNodeAndOwned`: while ``node`` is still in the scene and shown
    in a slice view, the view makes it a new default display node right away."""
    _removeNodes(scene, ownedNodes(node))


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
