"""The module's typed parameter node on a real vtkMRMLScriptedModuleNode, the choice of the counterfactual shown
beside the original, the percentile look-up of the display copies, and the device name in report.json."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")

import slicer  # noqa: E402
from slicer_scene import slicer_scene_fixture  # noqa: E402

from ACATLogic.options import ExplainOptions  # noqa: E402
from ACATSlicerLib.loading import LOG_FLOOR, levelCounts, levelValue, percentileLevel, quantise, toInputType  # noqa: E402
from ACATSlicerLib.parameters import NodeParameter, Parameter, ParameterNode, explainOptionParameters  # noqa: E402
from ACATSlicerLib.request import MODEL_DEFAULT, ExplainRequest, panelName  # noqa: E402
from ACATSlicerLib.results import shownCounterfactualKey  # noqa: E402

slicer_scene = pytest.fixture(slicer_scene_fixture)


class Panel(ParameterNode):
    inputVolume = NodeParameter("vtkMRMLScalarVolumeNode")
    lesionMask = NodeParameter("vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode")
    model = Parameter(str, "")
    opacity = Parameter(float, 0.5, within=(0.0, 1.0))
    extraFields = staticmethod(explainOptionParameters)


def test_defaults_are_written_once_before_anything_reads_and_none_is_a_node_value(slicer_scene):
    scene = slicer_scene.scene
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "ACATSlicer")
    modified = []
    node.AddObserver("ModifiedEvent", lambda caller, event: modified.append(event))
    p = Panel(node)
    p.setDefaults()
    assert len(modified) == 1  # one Modified event for every default
    names = set(node.GetParameterNames())
    assert {"model", "opacity", "method", "device", "variant", "stepSize"} <= names
    assert p.lesionMask is None and p.inputVolume is None  # an empty node selection is a valid state
    assert (p.model, p.opacity, p.method, p.variant, p.steps, p.earlyStop) == ("", 0.5, "counterfactual",
                                                                               MODEL_DEFAULT, 0, None)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    p.lesionMask = labelmap
    assert p.lesionMask is labelmap
    p.lesionMask = None
    assert p.lesionMask is None
    p.opacity, p.earlyStop = 0.25, False
    node.SetParameter("steps", "not a number")  # an older or edited scene: the default, not an exception
    again = Panel(node)
    assert (again.opacity, again.earlyStop, again.steps) == (0.25, False, 0)
    again.setDefaults()  # keeps what is set
    assert again.opacity == 0.25
    for bad, message in ((("opacity", 2.0), "must be in"), (("method", "nope"), "must be one of"),
                         (("steps", "7"), "must be a number"), (("nope", 1), "no parameter")):
        with pytest.raises((ValueError, AttributeError), match=message):
            setattr(p, *bad)
    with pytest.raises(ValueError, match="vtkMRMLLabelMapVolumeNode or vtkMRMLSegmentationNode"):
        p.lesionMask = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")


def test_every_explain_option_is_a_parameter_and_round_trips_to_the_childs_options(slicer_scene):
    fields = explainOptionParameters()
    assert set(fields) == {panelName(f.name) for f in dataclasses.fields(ExplainOptions)}
    p = Panel(slicer_scene.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    p.setDefaults()
    p.model = "/m"
    assert ExplainRequest.fromPanel(p) == ExplainRequest("/m", ExplainOptions())  # defaults: the card decides
    p.variant, p.earlyStop, p.stopProbability, p.targets, p.organMask = "paper", False, 0.7, "none,left", True
    assert ExplainRequest.fromPanel(p).options == ExplainOptions(variant="paper", early_stop=False,
                                                                 stop_probability=0.7, targets=("none", "left"),
                                                                 organ_mask=True)


@pytest.mark.parametrize("prediction, keys, expected", [
    ("left", ["abnormal", "none"], "none"),  # residual variant: towards healthy
    ("none", ["abnormal", "none"], "abnormal"),  # read as healthy: towards "any other class"
    ("left", ["both", "left", "none", "right"], "none"),  # every class a target
    ("none", ["both", "left", "none", "right"], "right"),  # the most probable class after the prediction
    ("covid19", ["covid19", "normal"], "normal"),  # a two-class model
    ("left", [], ""),  # a comparison method: no counterfactual
])
def test_the_counterfactual_beside_the_original_without_reading_a_voxel(prediction, keys, expected):
    probabilities = ({"normal": 0.3, "covid19": 0.7} if prediction == "covid19"
                     else {"none": 0.5, "left": 0.2, "right": 0.25, "both": 0.05})
    assert shownCounterfactualKey({"prediction": prediction, "probabilities": probabilities}, keys) == expected


def test_display_copies_and_percentiles_from_the_level_counts():
    rng = np.random.default_rng(0)
    voxels = rng.random((20, 30, 40), dtype=np.float32) ** 3
    voxels[:5] = 0
    levels = quantise(voxels)
    assert levels.dtype == np.uint8
    # logarithmic levels: 0 is 0, 1 is 255; increasing; half a level off at most: 0.9 % of the value above
    # LOG_FLOOR (0.01), 0.00009 below
    edges = quantise(np.array([[[0.0, 1.0, -0.5, 2.0]]], np.float32))
    np.testing.assert_array_equal(edges, [[[0, 255, 0, 255]]])
    order = np.argsort(voxels, axis=None)
    assert np.all(np.diff(levels.reshape(-1)[order].astype(int)) >= 0)
    half_level = np.expm1(0.5 * np.log1p(1 / LOG_FLOOR) / 255)
    assert np.all(np.abs(levelValue(levels) - voxels) <= (voxels + LOG_FLOOR) * half_level + 1e-6)
    assert half_level < 0.0091 and LOG_FLOOR * half_level < 0.0001
    linear = quantise(voxels, logarithmic=False)  # attention masks: linear levels
    assert np.abs(levelValue(linear, logarithmic=False) - voxels).max() <= 0.5 / 255 + 1e-7
    histogram = np.bincount(levels.reshape(-1), minlength=256)
    np.testing.assert_array_equal(levelCounts(levels), histogram)  # counted slab by slab (20 slices: several slabs)
    for p in (0, 25, 50, 95, 99.9, 100):
        assert percentileLevel(histogram, p) == int(np.percentile(levels, p, method="lower")), p
    hu = np.array([[[-1024.4, 35.5, 3000.2]]], np.float32)
    np.testing.assert_array_equal(toInputType(hu, np.int16), [[[-1024, 36, 3000]]])
    assert toInputType(np.array([[[40000.0]]], np.float32), np.int16)[0, 0, 0] == 32767  # clipped, not wrapped
    assert toInputType(hu, np.float32).dtype == np.float32


def test_the_device_name_written_to_report_json():
    import torch

    from ACATLogic.explain import device_name

    assert device_name(torch.device("cpu")) == "cpu" and device_name(torch.device("cuda", 1)) == "cuda:1"
    assert device_name("cpu") == "cpu"
