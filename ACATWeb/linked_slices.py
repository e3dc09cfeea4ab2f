"""Two slice views that always show the same slice: the original and its counterfactual.

Slicer links views through ``vtkMRMLSliceLinkLogic``, which follows only mouse interactions flagged by
the GUI's slice controllers; in the page the slice also moves through trame-slicer's slider, the
viewer's own jumps and fits. So the pair is mirrored here directly: whenever one slice node's plane
(SliceToRAS), zoom (field of view) or pan (XYZ origin) changes, the other copies it.
"""

from __future__ import annotations

import vtk


class SliceMirror:
    """Keeps ``sliceNodeB`` on the plane, zoom and pan of ``sliceNodeA`` and vice versa; `stop` ends it."""

    def __init__(self, slice_node_a, slice_node_b):
        self.nodes = (slice_node_a, slice_node_b)
        self._busy = False
        self._tags = [(n, n.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_modified)) for n in self.nodes]

    def _on_modified(self, source, _event) -> None:
        if self._busy:
            return
        target = self.nodes[1] if source is self.nodes[0] else self.nodes[0]
        if _same_view(source, target):
            return
        self._busy = True
        try:
            disabled = target.StartModify()
            target.GetSliceToRAS().DeepCopy(source.GetSliceToRAS())
            target.SetFieldOfView(*source.GetFieldOfView())
            target.SetXYZOrigin(*source.GetXYZOrigin())
            target.UpdateMatrices()
            target.EndModify(disabled)
        finally:
            self._busy = False

    def stop(self) -> None:
        for node, tag in self._tags:
            node.RemoveObserver(tag)
        self._tags = []


def _same_view(a, b, tolerance: float = 1e-6) -> bool:
    ma, mb = a.GetSliceToRAS(), b.GetSliceToRAS()
    same_plane = all(abs(ma.GetElement(r, c) - mb.GetElement(r, c)) <= tolerance for r in range(4) for c in range(4))
    same_fov = all(abs(x - y) <= tolerance for x, y in zip(a.GetFieldOfView(), b.GetFieldOfView()))
    same_origin = all(abs(x - y) <= tolerance for x, y in zip(a.GetXYZOrigin(), b.GetXYZOrigin()))
    return same_plane and same_fov and same_origin
