"""Result nodes, display, layout, subject hierarchy, localisation and export in a real MRML scene.

The output folder is written the way ``acat explain`` writes it, with a known saliency: a hot blob in
the patient's LEFT hemisphere of a generated head CT, so that positions can be checked by value.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")

import slicer  # noqa: E402
from slicer_scene import slicer_scene_fixture  # noqa: E402

from ACATSlicerLib import display, export, hierarchy, layout, localisation, plots, results, tables  # noqa: E402
from ACATSlicerLib.selftest_case import syntheticHeadCT  # noqa: E402
from ACATSlicerLib.volume_nodes import addVolumeNode, geometryFromIjkToRas, ijkToRasArray  # noqa: E402
from ACATLogic.io.itk_files import read_itk_file, write_itk_file  # noqa: E402
from ACATLogic.volume import CTVolume  # noqa: E402

slicer_scene = pytest.fixture(slicer_scene_fixture)
LABELS = ["none", "left", "right", "both"]


def _blob(shape, centre_ijk, radius):
    k, j, i = np.indices(shape)
    ci, cj, ck = centre_ijk
    return ((i - ci) ** 2 + (j - cj) ** 2 + (k - ck) ** 2) <= radius ** 2


@pytest.fixture
def case(slicer_scene):
    voxels, ijk_to_ras = syntheticHeadCT()
    scene = slicer_scene.scene
    node = addVolumeNode(scene, voxels, "Head CT", ijkToRas=ijk_to_ras)
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevelMinMax(-100, 200)
    # put the input in a patient/study, as a DICOM load does
    sh = hierarchy.subjectHierarchy(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Subject 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    sh.CreateItem(study, node)  # the Slicer GUI's subject-hierarchy plugins do this for every new node
    K, J, I = voxels.shape
    centre = (int(I * 0.7), J // 2, K // 2)  # i > I/2: towards the patient's LEFT (LPS identity)
    hot = _blob(voxels.shape, centre, 4)
    return {"node": node, "voxels": voxels, "hot": hot, "centre": centre, "study": study, "ijk_to_ras": ijk_to_ras}


def write_output(folder, case, method="counterfactual", prediction="left", model="test-model"):
    """An output folder as ``acat explain`` writes it (NRRDs on the input grid + report.json)."""
    spacing, origin, direction = geometryFromIjkToRas(case["ijk_to_ras"])
    grid = CTVolume(case["voxels"], spacing, origin, direction)
    rng = np.random.default_rng(0)
    saliency = (0.2 * rng.random(case["voxels"].shape)).astype(np.float32)
    saliency[case["hot"]] = 1.0
    folder.mkdir(parents=True)
    write_itk_file(grid.with_voxels(saliency), folder / "saliency.nrrd")
    files = ["saliency.nrrd"]
    if method == "counterfactual":
        for label in LABELS:
            cf = case["voxels"].copy()
            cf[case["hot"]] -= 35.0 if label == "none" else 5.0
            write_itk_file(grid.with_voxels(cf), folder / f"counterfactual_{label}.nrrd")
            files.append(f"counterfactual_{label}.nrrd")
        for mask in ("early", "fused"):
            write_itk_file(grid.with_voxels(saliency * 0.5), folder / f"attention_{mask}.nrrd")
            files.append(f"attention_{mask}.nrrd")
    probabilities = {"none": 0.1, "left": 0.7, "right": 0.15, "both": 0.05}
    report = {"prediction": prediction, "probabilities": probabilities, "model": {"id": model, "version": "0"},
              "method": method, "trajectory": {"none": [probabilities, {"none": 0.6, "left": 0.2, "right": 0.1,
                                                                          "both": 0.1}]}, "files": files}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_result_nodes_have_the_input_geometry_and_values(slicer_scene, case, tmp_path):
    scene = slicer_scene.scene
    out = write_output(tmp_path / "out", case)
    first = results.loadExplanationResults(scene, case["node"], out)
    # first the saliency and the counterfactual shown beside the original (towards healthy); the rest on demand
    assert set(first.volumeNodes()) == {"saliency", "counterfactual_none"} and first.outDir == out
    assert first.keys("attention") == ["early", "fused"] and sorted(first.keys("difference")) == sorted(LABELS)
    result = results.loadExplanationResults(scene, case["node"], out, everything=True)
    expected = ijkToRasArray(case["node"])
    nodes = result.volumeNodes()
    assert set(nodes) == {"saliency", *(f"counterfactual_{k}" for k in LABELS), *(f"difference_{k}" for k in LABELS),
                          "attention_early", "attention_fused"}
    for stem, node in nodes.items():
        np.testing.assert_array_equal(ijkToRasArray(node), expected, err_msg=stem)
        assert node.GetImageData().GetDimensions() == case["node"].GetImageData().GetDimensions()
        assert node.GetName().startswith("Head CT test-model counterfactual ")
    # the difference map is counterfactual - input, exactly
    diff = slicer.util.arrayFromVolume(result.differences["none"])
    assert diff[case["hot"]].tolist() == [-35.0] * int(case["hot"].sum())
    assert np.count_nonzero(diff[~case["hot"]]) == 0
    # [0, 1] maps are uint8 display copies, 0..255; the counterfactual keeps the input's float HU
    assert slicer.util.arrayFromVolume(result.saliency).dtype == np.uint8
    assert slicer.util.arrayFromVolume(result.saliency)[case["hot"]].min() == 255
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.counterfactuals["left"]),
                                  read_itk_file(out / "counterfactual_left.nrrd").voxels_hu)
    # towards "none" (healthy) is what is shown beside a "left" prediction
    assert result.shownCounterfactual() is result.counterfactuals["none"]
    rows = tables.tableRows(result.probabilityTable)
    assert [(r["Class"], r["Probability"], r["Predicted"]) for r in rows] == [
        ("none", 0.1, ""), ("left", 0.7, "yes"), ("right", 0.15, ""), ("both", 0.05, "")]
    trajectory = tables.tableRows(result.trajectoryTable)
    assert [r["towards none: p(none)"] for r in trajectory] == [0.1, 0.6]
    assert json.loads(result.reportNode.GetText())["prediction"] == "left"


def test_results_are_grouped_under_the_study_and_replaced_on_rerun(slicer_scene, case, tmp_path):
    scene = slicer_scene.scene
    sh = hierarchy.subjectHierarchy(scene)
    before = slicer_scene.nodeCount()
    first = results.loadExplanationResults(scene, case["node"], write_output(tmp_path / "a", case))
    after_first = slicer_scene.nodeCount()
    assert after_first > before
    assert sh.GetItemParent(first.folderItem) == case["study"]
    assert sh.GetItemName(first.folderItem) == "Head CT - ACAT test-model counterfactual"
    folder_nodes = hierarchy.nodesInFolder(scene, first.folderItem)
    assert {n.GetID() for n in folder_nodes} == {n.GetID() for n in first.allNodes()}
    old_ids = [n.GetID() for n in first.allNodes()]

    second = results.loadExplanationResults(scene, case["node"], write_output(tmp_path / "b", case))
    assert slicer_scene.nodeCount() == after_first  # replaced, not duplicated
    assert all(scene.GetNodeByID(i) is None for i in old_ids)
    assert hierarchy.findResultFolders(scene) == [second.folderItem]
    rebuilt = results.explanationFromFolder(scene, second.folderItem)
    assert rebuilt.saliency.GetID() == second.saliency.GetID()
    assert set(rebuilt.keys("counterfactual")) == set(LABELS) and rebuilt.prediction == "left"
    assert rebuilt.outDir == tmp_path / "b" and rebuilt.load("attention", "fused").GetScene() is scene

    third = results.loadExplanationResults(scene, case["node"], write_output(tmp_path / "c", case, method="gradient"))
    assert sorted(hierarchy.findResultFolders(scene)) == sorted([second.folderItem, third.folderItem])
    assert not third.keys("counterfactual") and third.saliency.GetName() == "Head CT test-model gradient saliency"
    assert third.shownCounterfactual() is None


def _nodeCounts(scene) -> dict:
    """class name -> how many nodes of exactly that class the scene holds."""
    counts = {}
    for n in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(n).GetClassName()
        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.mark.parametrize("sideBySide", [False, True], ids=["overlay", "side-by-side"])
def test_rerun_with_results_shown_replaces_every_node_of_the_previous_results(slicer_scene, case, tmp_path,
                                                                               sideBySide):
    """Explaining the same input + model + method again while its results are shown (the saliency a
    foreground layer of every slice view, or the counterfactual the background of the right-hand view)
    removes every node of the previous results - data, display and storage nodes, subject-hierarchy
    items - and nothing else: after each rerun the scene holds as many nodes of each class as after the
    first run."""
    scene = slicer_scene.scene
    sh = hierarchy.subjectHierarchy(scene)
    inputNode = case["node"]
    inputOwned = [n.GetID() for n in hierarchy.ownedNodes(inputNode)]

    def explainAndShow(n):
        result = results.loadExplanationResults(scene, inputNode, write_output(tmp_path / f"run{n}", case),
                                                everything=True)
        for node in result.allNodes():  # as after a scene save: every storable result node has a storage node
            if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None:
                assert node.AddDefaultStorageNode()
        # as after hiding or colouring the folder in the Data module: the folder item gets a display node
        folderDisplay = scene.AddNewNodeByClass("vtkMRMLFolderDisplayNode", sh.GetItemName(result.folderItem))
        sh.SetItemDataNode(result.folderItem, folderDisplay)
        layout.showResults(scene, result, layout.ViewOptions(opacity=0.6, sideBySide=sideBySide))
        return result

    previous = explainAndShow(0)
    counts, items = _nodeCounts(scene), sh.GetNumberOfItems()
    assert counts["vtkMRMLScalarVolumeDisplayNode"] == 1 + len(previous.volumeNodes())  # input + results
    assert counts["vtkMRMLVolumeArchetypeStorageNode"] == len(previous.volumeNodes())
    for n in range(1, 4):
        oldData = [node.GetID() for node in previous.allNodes()]
        oldOwned = [o.GetID() for node in previous.allNodes() for o in hierarchy.ownedNodes(node)]
        oldData.append(sh.GetItemDataNode(previous.folderItem).GetID())
        oldItems = {sh.GetItemByDataNode(node) for node in previous.allNodes()} | {previous.folderItem}
        assert len(oldOwned) > len(oldData)  # volumes have a display and a storage node, tables a storage node
        result = explainAndShow(n)
        now = _nodeCounts(scene)
        changed = {c: (counts.get(c, 0), now.get(c, 0)) for c in set(counts) | set(now) if counts.get(c) != now.get(c)}
        assert changed == {}, f"rerun {n}: (after the first run, now) per node class: {changed}"
        assert sh.GetNumberOfItems() == items
        assert [i for i in oldData + oldOwned if scene.GetNodeByID(i) is not None] == []
        assert not oldItems & set(slicer.util.getSubjectHierarchyItemChildren(recursive=True))  # old items gone
        assert hierarchy.findResultFolders(scene) == [result.folderItem]
        # nothing else was touched: the input, its display node and its place in the study
        assert scene.GetNodeByID(inputNode.GetID()) is inputNode
        assert [o.GetID() for o in hierarchy.ownedNodes(inputNode)] == inputOwned
        assert sh.GetItemParent(sh.GetItemByDataNode(inputNode)) == case["study"]
        # and the views show the new results
        red = layout.compositeNodeByLayoutName(scene, "Red")
        assert red.GetBackgroundVolumeID() == inputNode.GetID()
        assert red.GetForegroundVolumeID() == result.saliency.GetID()
        if sideBySide:
            yellow = layout.compositeNodeByLayoutName(scene, "Yellow")
            assert yellow.GetBackgroundVolumeID() == result.shownCounterfactual().GetID()
        assert result.saliency.GetDisplayNode().GetColorNode().GetName() == "PET-Heat"
        previous = result


def test_probability_plot_has_one_series_per_class_with_the_report_values(slicer_scene, case, tmp_path):
    scene = slicer_scene.scene
    out = write_output(tmp_path / "a", case)
    report = json.loads((out / "report.json").read_text())
    report["trajectory"] = {
        "none": [{"none": 0.1, "left": 0.7, "right": 0.15, "both": 0.05},
                 {"none": 0.4, "left": 0.4, "right": 0.1, "both": 0.1},
                 {"none": 0.8, "left": 0.1, "right": 0.05, "both": 0.05}],
        "right": [{"none": 0.1, "left": 0.7, "right": 0.15, "both": 0.05},
                  {"none": 0.1, "left": 0.2, "right": 0.6, "both": 0.1}]}
    (out / "report.json").write_text(json.dumps(report))
    counts = {c: slicer_scene.nodeCount(c) for c in ("vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode")}
    result = results.loadExplanationResults(scene, case["node"], out)
    assert slicer_scene.nodeCount("vtkMRMLPlotChartNode") == counts["vtkMRMLPlotChartNode"] + 1
    assert slicer_scene.nodeCount("vtkMRMLPlotSeriesNode") == counts["vtkMRMLPlotSeriesNode"] + 8  # 2 targets x 4
    chart = result.probabilityChart
    assert chart.GetName() == "Head CT test-model counterfactual probability per step"
    assert [chart.GetNthPlotSeriesNodeID(n) for n in range(chart.GetNumberOfPlotSeriesNodes())] == [
        s.GetID() for s in result.probabilitySeries]
    assert (chart.GetYAxisRange()[0], chart.GetYAxisRange()[1]) == (0.0, 1.0)
    for series in result.probabilitySeries:
        assert series.GetTableNode() is result.trajectoryTable and series.GetXColumnName() == "Step"
        target, label = re.fullmatch(r"towards (\w+): p\((\w+)\)", series.GetYColumnName()).groups()
        rows = report["trajectory"][target]
        points = plots.seriesPoints(series)
        assert [x for x, _ in points] == [0.0, 1.0, 2.0]
        assert [y for _, y in points][:len(rows)] == pytest.approx([row[label] for row in rows], abs=1e-12)
        assert all(np.isnan(y) for _, y in points[len(rows):])  # the shorter run is padded, not invented
    assert len({tuple(s.GetColor()) for s in result.probabilitySeries[:4]}) == 4
    sh = hierarchy.subjectHierarchy(scene)
    assert {n.GetID() for n in hierarchy.nodesInFolder(scene, result.folderItem)} >= {
        chart.GetID(), *(s.GetID() for s in result.probabilitySeries)}
    rebuilt = results.explanationFromFolder(scene, result.folderItem)
    assert rebuilt.probabilityChart is chart and len(rebuilt.probabilitySeries) == 8
    assert sh.GetItemParent(sh.GetItemByDataNode(chart)) == result.folderItem

    # explaining again replaces the chart and its series instead of adding more
    old_ids = [chart.GetID()] + [s.GetID() for s in result.probabilitySeries]
    again = results.loadExplanationResults(scene, case["node"], out)
    assert slicer_scene.nodeCount("vtkMRMLPlotChartNode") == counts["vtkMRMLPlotChartNode"] + 1
    assert slicer_scene.nodeCount("vtkMRMLPlotSeriesNode") == counts["vtkMRMLPlotSeriesNode"] + 8
    assert all(scene.GetNodeByID(i) is None for i in old_ids) and again.probabilityChart.GetScene() is scene

    # a method without optimisation steps has no trajectory and no chart
    gradient = write_output(tmp_path / "g", case, method="gradient")
    report = json.loads((gradient / "report.json").read_text())
    del report["trajectory"]
    (gradient / "report.json").write_text(json.dumps(report))
    assert results.loadExplanationResults(scene, case["node"], gradient).probabilityChart is None
    assert slicer_scene.nodeCount("vtkMRMLPlotChartNode") == counts["vtkMRMLPlotChartNode"] + 1


def test_bad_output_folder_leaves_the_scene_unchanged(slicer_scene, case, tmp_path):
    out = write_output(tmp_path / "out", case)
    spacing, origin, direction = geometryFromIjkToRas(case["ijk_to_ras"])
    wrong = CTVolume(np.zeros((3, 4, 5), np.float32), spacing, origin, direction)
    write_itk_file(wrong, out / "attention_late.nrrd")
    write_itk_file(wrong, out / "counterfactual_none.nrrd", overwrite=True)
    before = slicer_scene.nodeCount()
    with pytest.raises(ValueError, match="counterfactual_none.nrrd is not on the grid of the explained volume"):
        results.loadExplanationResults(slicer_scene.scene, case["node"], out)
    assert slicer_scene.nodeCount() == before
    # a bad map read on demand leaves the scene as it was too
    (out / "counterfactual_none.nrrd").unlink()
    result = results.loadExplanationResults(slicer_scene.scene, case["node"], out)
    count = slicer_scene.nodeCount()
    with pytest.raises(ValueError, match="attention_late.nrrd is not on the grid"):
        result.load("attention", "late")
    assert slicer_scene.nodeCount() == count and "late" not in result.attention


def test_overlay_in_every_slice_view_with_heat_colours_and_threshold(slicer_scene, case, tmp_path):
    scene = slicer_scene.scene
    result = results.loadExplanationResults(scene, case["node"], write_output(tmp_path / "out", case), everything=True)
    layout.showResults(scene, result, layout.ViewOptions(opacity=0.7, sideBySide=False))
    composites = display.sliceCompositeNodes(scene)
    assert len(composites) == 3
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == case["node"].GetID()
        assert composite.GetForegroundVolumeID() == result.saliency.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.7)
    shown = result.saliency.GetDisplayNode()
    assert shown.GetColorNode().GetName() == "PET-Heat"
    saliency = slicer.util.arrayFromVolume(result.saliency)  # uint8 levels 0..255
    p95 = float(np.percentile(saliency, 95, method="lower"))  # from the histogram counted once, on reading
    assert shown.GetApplyThreshold() and shown.GetLowerThreshold() == pytest.approx(p95)
    margin = 0.5 * (255 - p95)  # the window keeps the shown range off the black and white ends of PET-Heat
    assert shown.GetWindowLevelMin() == pytest.approx(p95 - margin)
    assert shown.GetWindowLevelMax() == pytest.approx(255 + margin)
    # the default shows the top 5%: about 5% of the voxels pass the lower threshold (levels tie a little)
    assert np.mean(saliency >= shown.GetLowerThreshold()) == pytest.approx(0.05, abs=0.01)
    histogram = result.histogram(result.saliency)
    assert display.applySaliencyThreshold(result.saliency, 50.0, histogram) == float(
        np.percentile(saliency, 50, method="lower"))
    assert display.applySaliencyThreshold(result.saliency, 50.0) == display.applySaliencyThreshold(
        result.saliency, 50.0, histogram)  # counted now: the same level
    # a voxel of 0 is never coloured, whatever the percentile
    assert display.applySaliencyThreshold(result.saliency, 0.0, histogram) == 1.0
    display.setOverlayOpacity(scene, 0.25, result.saliency)
    assert [c.GetForegroundOpacity() for c in composites] == pytest.approx([0.25] * 3)
    # the attention masks and counterfactuals are coloured too
    assert result.attention["fused"].GetDisplayNode().GetColorNode().GetName() == "PET-Heat"
    assert result.counterfactuals["none"].GetDisplayNode().GetWindowLevelMin() == pytest.approx(-100)
    assert result.differences["none"].GetDisplayNode().GetWindowLevelMin() == pytest.approx(-35.0)


def _pixel_of(slicer_scene, ras, view="Red"):
    """(row, column) in the composited slice image of the RAS point ``ras`` (on the current slice)."""
    slice_node = slicer_scene.sliceLogics[view].GetSliceNode()
    xy_to_ras = slicer.util.arrayFromVTKMatrix(slice_node.GetXYToRAS())
    x, y, _, _ = np.linalg.inv(xy_to_ras) @ [*ras, 1.0]
    return int(round(y)), int(round(x))


def test_composited_slice_image_shows_the_overlay_on_the_left_only(slicer_scene, case, tmp_path):
    """Slicer's own slice pipeline (background + thresholded heat foreground): colour at the hot blob in
    the patient's left hemisphere, plain grey at the mirror point in the right hemisphere."""
    scene = slicer_scene.scene
    result = results.loadExplanationResults(scene, case["node"], write_output(tmp_path / "out", case))
    layout.showResults(scene, result, layout.ViewOptions(opacity=1.0, sideBySide=False))
    ci, cj, ck = case["centre"]
    I = case["voxels"].shape[2]
    hot_ras = (case["ijk_to_ras"] @ [ci, cj, ck, 1])[:3]
    mirror_ras = (case["ijk_to_ras"] @ [I - 1 - ci, cj, ck, 1])[:3]
    assert hot_ras[0] < 0 < mirror_ras[0]  # RAS x < 0 is the patient's left
    red = slicer_scene.sliceLogics["Red"]
    red.FitSliceToAll()
    red.SetSliceOffset(hot_ras[2])
    image = slicer_scene.compositeImage("Red")
    hot = image[_pixel_of(slicer_scene, hot_ras)][:3].astype(int)
    mirror = image[_pixel_of(slicer_scene, mirror_ras)][:3].astype(int)
    assert hot[0] > 200 and hot[0] - hot[2] > 60  # the hot end of PET-Heat: yellow, less blue
    assert mirror[0] == mirror[1] == mirror[2]  # grey: the CT alone
    # brain at 35 HU in a -100..200 window
    assert mirror[0] == pytest.approx(255 * 135 / 300, abs=3)
    # with the overlay hidden (opacity 0) the hot point is grey as well
    display.setOverlayOpacity(scene, 0.0)
    hot_off = slicer_scene.compositeImage("Red")[_pixel_of(slicer_scene, hot_ras)][:3].astype(int)
    assert hot_off[0] == hot_off[1] == hot_off[2]


def test_the_top_5_percent_of_a_peaky_map_is_5_percent_of_the_voxels(slicer_scene, case, tmp_path):
    """A whitened map is peaky: most of the organ holds values near 0.002 of the maximum. Quantised to 256
    linear levels, levels 0 and 1 held most of it and "the top 5 %" coloured 8.4 % of this map (8.7 % of
    the demo's); the display copy's logarithmic levels keep the threshold near the exact percentile."""
    scene = slicer_scene.scene
    folder = write_output(tmp_path / "out", case)
    spacing, origin, direction = geometryFromIjkToRas(case["ijk_to_ras"])
    rng = np.random.default_rng(1)
    saliency = np.zeros(case["voxels"].shape, np.float32)
    organ = rng.random(saliency.shape) < 0.2  # 80 % outside the organ: 0
    saliency[organ] = rng.exponential(0.002, int(organ.sum()))
    saliency[case["hot"]] = 1.0
    write_itk_file(CTVolume(saliency, spacing, origin, direction), folder / "saliency.nrrd", overwrite=True)
    result = results.loadExplanationResults(scene, case["node"], folder)
    threshold = result.saliency.GetDisplayNode().GetLowerThreshold()
    coloured = slicer.util.arrayFromVolume(result.saliency) >= threshold
    assert np.mean(coloured) == pytest.approx(0.05, abs=0.005)  # what ties in the threshold's level adds
    # the coloured voxels are the top of the exact map
    exact = saliency >= float(np.percentile(saliency, 95))
    assert np.all(coloured[exact]) and np.mean(coloured & ~exact) < 0.005


def test_the_overlay_focus_weighs_the_map_values_of_the_display_levels(slicer_scene, case, tmp_path):
    """The focus point (web viewer, docs picture) from the uint8 display copy is the weighted centre that the
    file's exact values give, on the slice holding most of the top 5 % inside the body."""
    folder = write_output(tmp_path / "out", case)
    result = results.loadExplanationResults(slicer_scene.scene, case["node"], folder)
    ras = display.overlayFocus(result.saliency, case["node"], 95.0)
    exact = read_itk_file(folder / "saliency.nrrd").voxels_hu.astype(np.float64)
    levels = slicer.util.arrayFromVolume(result.saliency)
    top = (levels >= np.percentile(levels, 95)) & (case["voxels"] > display.BODY_HU)
    weights = np.where(top, exact, 0.0)
    k = int(np.argmax(weights.sum(axis=(1, 2))))
    j, i = np.indices(weights.shape[1:])
    w = weights[k] / weights[k].sum()
    expected = (case["ijk_to_ras"] @ [float((w * i).sum()), float((w * j).sum()), k, 1.0])[:3]
    np.testing.assert_allclose(ras, expected, atol=0.05)  # mm: half a level's error in the weights at most
    assert display.overlayFocus(result.saliency, case["node"], 95.0) is not None
    empty = addVolumeNode(slicer_scene.scene, np.zeros(case["voxels"].shape, np.uint8), "empty",
                          referenceNode=case["node"])
    assert display.overlayFocus(empty, case["node"]) is None


def test_side_by_side_layout_links_original_and_counterfactual(slicer_scene, case, tmp_path):
    scene = slicer_scene.scene
    result = results.loadExplanationResults(scene, case["node"], write_output(tmp_path / "out", case))
    layout.showResults(scene, result, layout.ViewOptions(opacity=0.4))
    layout_node = layout.layoutNode(scene)
    # side by side with the probability plot below: the module's layout, its plot view shows the chart
    assert layout_node.GetViewArrangement() == layout.SIDE_BY_SIDE_PLOT_LAYOUT
    plot_views = slicer.util.getNodesByClass("vtkMRMLPlotViewNode")
    assert [v.GetPlotChartNodeID() for v in plot_views] == [result.probabilityChart.GetID()]
    red, yellow = (layout.compositeNodeByLayoutName(scene, n) for n in ("Red", "Yellow"))
    assert red.GetBackgroundVolumeID() == case["node"].GetID()
    assert red.GetForegroundVolumeID() == result.saliency.GetID()
    assert yellow.GetBackgroundVolumeID() == result.counterfactuals["none"].GetID()
    assert yellow.GetForegroundVolumeID() is None
    assert red.GetLinkedControl() and yellow.GetLinkedControl()
    assert layout.sliceNodeByLayoutName(scene, "Yellow").GetOrientationString() == "Axial"
    # the counterfactual view shows the changed blob: darker (35 HU less) than the original
    ci, cj, ck = case["centre"]
    hot_ras = (case["ijk_to_ras"] @ [ci, cj, ck, 1])[:3]
    for view in ("Red", "Yellow"):
        slicer_scene.sliceLogics[view].FitSliceToAll()
        slicer_scene.sliceLogics[view].SetSliceOffset(hot_ras[2])
    display.setOverlayOpacity(scene, 0.0)
    original = slicer_scene.compositeImage("Red")[_pixel_of(slicer_scene, hot_ras, "Red")][0]
    counterfactual = slicer_scene.compositeImage("Yellow")[_pixel_of(slicer_scene, hot_ras, "Yellow")][0]
    assert int(original) - int(counterfactual) == pytest.approx(255 * 35 / 300, abs=3)


def test_localisation_score_from_labelmap_and_segmentation(slicer_scene, case, tmp_path):
    scene = slicer_scene.scene
    result = results.loadExplanationResults(scene, case["node"], write_output(tmp_path / "out", case),
                                            everything=True)
    lesion = addVolumeNode(scene, case["hot"].astype(np.uint8), "lesion", referenceNode=case["node"],
                           nodeClass="vtkMRMLLabelMapVolumeNode")
    score = localisation.localisationScore(result.saliency, lesion, case["node"])
    assert score == {"hit": True, "iou": 1.0, "dice": 1.0, "lesionVoxels": int(case["hot"].sum())}
    mirrored = addVolumeNode(scene, case["hot"][:, :, ::-1].astype(np.uint8), "other side",
                             referenceNode=case["node"], nodeClass="vtkMRMLLabelMapVolumeNode")
    miss = localisation.localisationScore(result.saliency, mirrored, case["node"])
    assert miss["hit"] is False and miss["iou"] == 0.0 and miss["dice"] == 0.0
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesion segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lesion, segmentation)
    before = slicer_scene.nodeCount()
    from_segment = localisation.localisationScore(result.saliency, segmentation, case["node"])
    assert from_segment["hit"] is True and from_segment["dice"] == pytest.approx(1.0)
    assert slicer_scene.nodeCount() == before  # the temporary labelmap is gone
    with pytest.raises(ValueError, match="neither a segmentation nor a labelmap"):
        localisation.localisationScore(result.saliency, result.probabilityTable, case["node"])


def test_export_copies_the_childs_folder_and_adds_the_localisation(slicer_scene, case, tmp_path):
    """One writer: the export is the child's folder byte for byte (subfolders too, e.g. DICOM objects),
    and what the user added goes into files of its own; report.json is never rewritten."""
    import filecmp

    scene = slicer_scene.scene
    out = write_output(tmp_path / "out", case)
    (out / "dicom").mkdir()
    (out / "dicom" / "saliency-map.dcm").write_bytes(b"DICM stand-in")
    result = results.loadExplanationResults(scene, case["node"], out)
    lesion = addVolumeNode(scene, case["hot"].astype(np.uint8), "lesion", referenceNode=case["node"],
                           nodeClass="vtkMRMLLabelMapVolumeNode")
    files = export.exportResults(result, tmp_path / "export", localisation={"hit": True, "iou": float("nan")},
                                 lesionNode=lesion)
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(f.relative_to(tmp_path / "export").as_posix() for f in files) == sorted(
        copied + ["localisation.json", "lesion_mask.nrrd"])
    assert all(filecmp.cmp(out / name, tmp_path / "export" / name, shallow=False) for name in copied)
    score = json.loads((tmp_path / "export" / "localisation.json").read_text())
    assert score == {"hit": True, "iou": None, "lesion_file": "lesion_mask.nrrd"}
    mask = read_itk_file(tmp_path / "export" / "lesion_mask.nrrd")
    np.testing.assert_array_equal(mask.voxels_hu, case["hot"].astype(np.float32))
    spacing, origin, direction = geometryFromIjkToRas(case["ijk_to_ras"])
    np.testing.assert_allclose(mask.origin_mm, origin, atol=1e-9)
    assert "Subject 1" not in (tmp_path / "export" / "localisation.json").read_text()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    with pytest.raises(ValueError, match="not an empty folder"):
        export.exportResults(result, tmp_path / "export")


def test_the_module_colours_the_same_top_share_as_overview_png():
    """One default threshold for every front end: the module's (kept free of ACATLogic imports, see
    ACATSlicerLib's docstring) equals ACATLogic's, which overview.png and the web viewer use."""
    from ACATLogic.options import OVERLAY_PERCENTILE

    assert display.DEFAULT_PERCENTILE == OVERLAY_PERCENTILE
