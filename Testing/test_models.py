"""The networks: shapes, the registry, hemisphere semantics, ACAT's attention algebra, the autoencoder.

Small configurations on CPU (64x64 slices, 3 slices per scan); the full ResNet-50 only for one shape
and parameter-count check.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ACATLogic.models import (ACATClassifier, BrainMTL, MTLBackbone, ResNetBackbone, SliceAutoencoder,
                              create_model, list_models, register_model)
from ACATLogic.models.layers import SliceAttention, SpatialAttention, apply_attention, global_average_pool
from ACATLogic.models.layouts import HemisphereLayout
from ACATLogic.models.mtl import four_class_log_probs

WIDTHS = (4, 4, 8, 8, 8, 8, 8)
CLASSIFIERS = [
    ("brain_mtl", {"widths": WIDTHS}),
    ("lung_resnet_small", {}),
    ("lung_resnet", {"depths": (1, 1, 1, 1), "base_width": 4}),
    ("acat", {"backbone": "brain_mtl", "widths": WIDTHS, "slice_hidden": 8}),
    ("acat", {"backbone": "lung_resnet_small", "slice_hidden": 8}),
    ("acat", {"backbone": "lung_resnet", "depths": (1, 1, 1, 1), "base_width": 4, "attention_batch_norm": True}),
    ("slice_resnet", {"class_names": ["normal", "cyst", "mass"], "base_width": 4}),
    ("acat", {"backbone": "slice_resnet", "class_names": ["normal", "cyst", "mass"], "base_width": 4,
              "slice_hidden": 8}),
]
THREE = ("normal", "cyst", "mass")
IDS = [f"{name}-{cfg.get('backbone', '')}{'-bn' if cfg.get('attention_batch_norm') else ''}" for name, cfg in CLASSIFIERS]
ACAT_CASES = [(n, c) for n, c in CLASSIFIERS if n == "acat"]
ACAT_IDS = [i for i, (n, _) in zip(IDS, CLASSIFIERS) if n == "acat"]


def _build(name: str, config: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **config)


def _inputs(batch: int = 2, slices: int = 3, height: int = 64, width: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, slices, 1, height, width, generator=g)
    saliency = torch.rand(batch, slices, 1, height, width, generator=g)
    return x, saliency


def _run(model, x, saliency):
    return model(x, saliency) if isinstance(model, ACATClassifier) else model(x)


def _randomise_batch_norm(model: torch.nn.Module, seed: int = 3) -> None:
    """Non-trivial BN statistics, so eval-mode checks do not pass merely because BN is the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ---------------------------------------------------------------- registry

def test_registry_lists_every_model_and_names_them_when_a_name_is_unknown():
    # other test modules register toy models named "test_*"; the project's own are these
    assert [n for n in list_models() if not n.startswith("test_")] == sorted(["acat", "autoencoder", "brain_mtl", "lung_resnet", "lung_resnet50",
                                    "lung_resnet_small", "slice_resnet"])
    assert {n for n, _ in CLASSIFIERS} | {"lung_resnet50", "autoencoder"} == \
        {n for n in list_models() if not n.startswith("test_")}
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*brain_mtl.*lung_resnet50"):
        create_model("resnet18")


def test_register_model_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_model("brain_mtl")(lambda: None)
    assert "brain_mtl" in list_models()


@pytest.mark.parametrize(("name", "config"), CLASSIFIERS + [("autoencoder", {"channels": (3, 5, 7)})],
                         ids=IDS + ["autoencoder"])
def test_config_rebuilds_the_same_model(name, config):
    model = _build(name, config).eval()
    assert model.registry_name == name
    config_json = json.loads(json.dumps(model.config))  # what a JSON model card would store
    twin = create_model(model.registry_name, **config_json).eval()
    assert twin.config == model.config
    a, b = model.state_dict(), twin.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    twin.load_state_dict(a)
    if name == "autoencoder":
        x = torch.rand(2, 1, 32, 32)
        torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    else:
        x, s = _inputs()
        torch.testing.assert_close(_run(twin, x, s), _run(model, x, s), rtol=0, atol=0)


def test_named_resnet_factories_fix_their_architecture():
    small = create_model("lung_resnet_small")
    assert small.registry_name == "lung_resnet_small" and small.config == {}
    assert [len(layer) for layer in small.backbone.stages[1:]] == [1, 1, 1, 1]
    assert small.backbone.stage_channels == [8, 32, 64, 128, 256]
    acat = create_model("acat", backbone="lung_resnet_small")
    assert acat.config == {"backbone": "lung_resnet_small", "attention_batch_norm": False, "slice_hidden": 64}


# ---------------------------------------------------------------- every classifier

@pytest.mark.parametrize(("name", "config"), CLASSIFIERS, ids=IDS)
def test_output_shape_class_names_and_gradcam_layer(name, config):
    model = _build(name, config).eval()
    x, s = _inputs()
    captured = []
    model.gradcam_layer.register_forward_hook(lambda m, i, o: captured.append(o))
    out = _run(model, x, s)
    assert out.shape == (2, len(model.class_names))
    assert torch.isfinite(out).all()
    if model.task == "brain":
        assert model.class_names == ("none", "left", "right", "both")
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(2))
    elif "class_names" in config:
        assert model.class_names == THREE and model.config["class_names"] == list(THREE)
    else:
        assert model.class_names == ("normal", "covid19")
    (t,) = captured
    maps = model.layer_output_to_slices(t, 2, 3)
    # the Grad-CAM layer is the last feature map: 8x (brain) or 32x (lung) smaller than the slice
    stride = 8 if model.task == "brain" else 32
    assert maps.shape == (2, 3, t.shape[1], 64 // stride, 64 // stride)
    if not isinstance(model, ACATClassifier):
        assert model.attention_maps() == {}


@pytest.mark.parametrize(("name", "config"), CLASSIFIERS, ids=IDS)
def test_input_gradients_are_finite_and_nonzero(name, config):
    model = _build(name, config).train()
    x, s = _inputs()
    x.requires_grad_(True)
    s.requires_grad_(True)
    out = _run(model, x, s)
    out[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # every slice contributes to the scan's output
    assert (x.grad.abs().sum(dim=(2, 3, 4)) > 0).all()
    if isinstance(model, ACATClassifier):
        # the saliency map steers the prediction through the attention masks
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    else:
        assert s.grad is None


@pytest.mark.parametrize(("name", "config"), CLASSIFIERS, ids=IDS)
def test_eval_outputs_are_deterministic_and_independent_of_the_batch(name, config):
    model = _build(name, config)
    _randomise_batch_norm(model)
    model.eval()
    x, s = _inputs()
    first = _run(model, x, s)
    torch.testing.assert_close(_run(model, x, s), first, rtol=0, atol=0)
    # a scan's prediction does not depend on the other scans in the batch
    torch.testing.assert_close(_run(model, x[1:], s[1:]), first[1:], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- brain MTL

def test_brain_mtl_output_is_the_four_class_log_probability_of_the_two_heads():
    model = _build("brain_mtl", {"widths": WIDTHS}).eval()
    x, _ = _inputs()
    out = model(x)
    heads = model.forward_heads(x)
    assert heads["lesion"].shape == (2, 2) and heads["side"].shape == (2, 3)
    p_lesion = heads["lesion"].softmax(-1)
    p_side = heads["side"].softmax(-1)
    expected = torch.stack([p_lesion[:, 0], p_lesion[:, 1] * p_side[:, 0], p_lesion[:, 1] * p_side[:, 1],
                            p_lesion[:, 1] * p_side[:, 2]], dim=-1)
    torch.testing.assert_close(out.softmax(-1), expected)
    torch.testing.assert_close(out.exp(), expected)
    # cross-entropy on the output is the negative log-probability of the class
    target = torch.tensor([2, 0])
    torch.testing.assert_close(F.cross_entropy(out, target), -expected[[0, 1], target].log().mean())


def test_four_class_log_probs_on_known_logits():
    lesion = torch.tensor([[0.0, 0.0]])                # p(lesion) = 1/2
    side = torch.log(torch.tensor([[1.0, 2.0, 1.0]]))  # p(side | lesion) = 1/4, 1/2, 1/4
    torch.testing.assert_close(four_class_log_probs(lesion, side).exp(), torch.tensor([[0.5, 0.125, 0.25, 0.125]]))


def test_hemisphere_layout_puts_the_patients_left_first_and_mirrors_the_right():
    layout = HemisphereLayout()
    x = torch.zeros(1, 1, 1, 4, 8)
    x[..., 0, 7] = 1.0   # far patient-left (highest column)
    x[..., 1, 0] = 2.0   # far patient-right (column 0)
    x[..., 2, 3] = 3.0   # right hemisphere, next to the midline
    images = layout.to_images(x)
    assert images.shape == (2, 1, 4, 4)
    left, right = images[0, 0], images[1, 0]
    # both lateral sides (skull) at the last column, both medial sides at column 0
    assert left[0, 3] == 1.0 and right[1, 3] == 2.0 and right[2, 0] == 3.0
    assert left.sum() == 1.0 and right.sum() == 5.0
    # and back: the reassembly is the exact inverse
    torch.testing.assert_close(layout.to_slices(images, 1, 1), x, rtol=0, atol=0)
    x_big, _ = _inputs(2, 3, 32, 40)
    torch.testing.assert_close(layout.to_slices(layout.to_images(x_big), 2, 3), x_big, rtol=0, atol=0)


def test_mirroring_the_image_swaps_the_left_and_right_features():
    model = _build("brain_mtl", {"widths": WIDTHS})
    _randomise_batch_norm(model)
    model.eval()
    x, _ = _inputs()
    features = model.slice_features(x)
    mirrored = model.slice_features(x.flip(-1))
    c = model.backbone.out_channels
    assert features.shape == (2, 3, 2 * c)
    assert not torch.allclose(features[..., :c], features[..., c:])
    torch.testing.assert_close(mirrored[..., :c], features[..., c:])
    torch.testing.assert_close(mirrored[..., c:], features[..., :c])


def test_heads_blind_to_left_features_ignore_the_left_hemisphere():
    model = _build("brain_mtl", {"widths": WIDTHS}).eval()
    c = model.backbone.out_channels
    with torch.no_grad():
        model.head.lesion[0].weight[:, :c] = 0.0  # [left, right]: the first c inputs are the left side
        model.head.side[0].weight[:, :c] = 0.0
    x, _ = _inputs()
    out = model(x)
    changed_left = x.clone()
    changed_left[..., 32:] = torch.rand_like(changed_left[..., 32:])  # columns [W/2:] = patient's left
    torch.testing.assert_close(model(changed_left), out, rtol=0, atol=0)
    changed_right = x.clone()
    changed_right[..., :32] = torch.rand_like(changed_right[..., :32])
    assert not torch.allclose(model(changed_right), out)


def test_brain_gradcam_maps_are_mirror_equivariant():
    model = _build("brain_mtl", {"widths": WIDTHS}).eval()
    captured = []
    model.gradcam_layer.register_forward_hook(lambda m, i, o: captured.append(o))
    x, _ = _inputs(1, 2, 64, 48)
    model(x)
    model(x.flip(-1))
    assert captured[0].shape == (1 * 2 * 2, 8, 8, 3)
    maps, maps_mirrored = (model.layer_output_to_slices(t, 1, 2) for t in captured)
    assert maps.shape == (1, 2, 8, 8, 6)
    torch.testing.assert_close(maps_mirrored, maps.flip(-1))


def test_brain_model_rejects_an_odd_width():
    model = _build("brain_mtl", {"widths": WIDTHS})
    with pytest.raises(ValueError, match="even width"):
        model(torch.rand(1, 2, 1, 64, 63))


def test_mtl_backbone_has_seven_convolutions_and_output_stride_8():
    backbone = MTLBackbone(1, WIDTHS).eval()
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(backbone.stages) == 7 and len(convs) == 7
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert backbone.stage_channels == list(WIDTHS) and backbone.out_channels == 8
    x = torch.rand(2, 1, 64, 40)
    sizes = []
    for stage in backbone.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[-2:]))
    assert sizes == [(64, 40), (32, 20), (32, 20), (16, 10), (16, 10), (8, 5), (8, 5)]


# ---------------------------------------------------------------- lung ResNet

def test_resnet50_layout_shape_and_parameter_count():
    torch.manual_seed(0)
    model = create_model("lung_resnet50").eval()
    backbone = model.backbone
    # torchvision's ResNet-50 trunk has 23,508,032 parameters with a 3-channel stem; one input channel
    # removes 2 * 64 * 7 * 7 weights from the first convolution
    assert sum(p.numel() for p in backbone.parameters()) == 23_508_032 - 2 * 64 * 7 * 7
    assert sum(p.numel() for p in model.parameters()) == 23_501_760 + 2048 * 2 + 2
    assert [len(layer) for layer in backbone.stages[1:]] == [3, 4, 6, 3]
    assert backbone.stage_channels == [64, 256, 512, 1024, 2048] and backbone.attention_stages == (1, 2, 3)
    with torch.no_grad():
        out = model(torch.rand(1, 2, 1, 64, 64))
    assert out.shape == (1, 2) and torch.isfinite(out).all()


def test_resnet_backbone_stage_resolutions():
    backbone = ResNetBackbone((1, 1, 1, 1), 4).eval()
    x = torch.rand(1, 1, 96, 80)
    sizes = []
    for stage in backbone.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(4, 24, 20), (16, 24, 20), (32, 12, 10), (64, 6, 5), (128, 3, 3)]


# ---------------------------------------------------------------- layers

def test_spatial_attention_on_a_fixed_tensor():
    attention = SpatialAttention()
    with torch.no_grad():
        attention.conv.weight.copy_(torch.arange(9.0).reshape(1, 1, 3, 3) / 50 - 0.08)
        attention.conv.bias.fill_(-0.3)
    features = torch.stack([torch.arange(16.0).reshape(4, 4) / 16, torch.full((4, 4), 0.5),
                            -torch.ones(4, 4)]).unsqueeze(0)  # (1, 3, 4, 4)
    mask = attention(features)
    channel_max = torch.maximum(torch.arange(16.0).reshape(4, 4) / 16, torch.tensor(0.5))
    expected = torch.sigmoid(F.conv2d(channel_max[None, None], attention.conv.weight, padding=1) - 0.3)
    assert mask.shape == (1, 1, 4, 4)
    torch.testing.assert_close(mask, expected)
    assert ((mask > 0) & (mask < 1)).all()
    g = apply_attention(features, mask)
    assert torch.equal(g, features + features * mask)
    # one mask for all channels: every channel scaled by the same 1 + S
    torch.testing.assert_close(g[0, 0], features[0, 0] * (1 + mask[0, 0]))
    torch.testing.assert_close(g[0, 2], -(1 + mask[0, 0]))

    with_bn = SpatialAttention(batch_norm=True)
    assert with_bn.conv.bias is None and isinstance(with_bn.bn, torch.nn.BatchNorm2d)
    assert with_bn(features).shape == (1, 1, 4, 4)


def test_slice_attention_weights_and_weighted_mean():
    torch.manual_seed(0)
    attention = SliceAttention(5, hidden=7).eval()
    features = torch.randn(2, 4, 5)
    pooled, weights = attention(features)
    assert weights.shape == (2, 4) and pooled.shape == (2, 5)
    assert ((weights > 0) & (weights < 1)).all()
    torch.testing.assert_close(weights, attention.weights(features))
    manual = torch.stack([sum(weights[b, s] * features[b, s] for s in range(4)) / weights[b].sum() for b in range(2)])
    torch.testing.assert_close(pooled, manual)
    # equal weights give the plain mean
    with torch.no_grad():
        attention.mlp[-1].weight.zero_()
        attention.mlp[-1].bias.zero_()
    pooled, weights = attention(features)
    torch.testing.assert_close(weights, torch.full((2, 4), 0.5))
    torch.testing.assert_close(pooled, features.mean(1))


# ---------------------------------------------------------------- ACAT

EXPECTED_MAP_SIZES = {
    # backbone, (H, W) -> early, middle, late, fused (h, w) in image layout
    ("brain_mtl", (64, 64)): [(64, 64), (32, 32), (16, 16), (8, 8)],
    ("brain_mtl", (96, 80)): [(96, 80), (48, 40), (24, 20), (12, 10)],
    ("lung_resnet_small", (64, 64)): [(16, 16), (8, 8), (4, 4), (2, 2)],
    ("lung_resnet_small", (96, 80)): [(24, 20), (12, 10), (6, 5), (3, 3)],
    ("lung_resnet", (64, 64)): [(16, 16), (8, 8), (4, 4), (2, 2)],
    ("lung_resnet", (96, 80)): [(24, 20), (12, 10), (6, 5), (3, 3)],
    ("slice_resnet", (64, 64)): [(16, 16), (8, 8), (4, 4), (2, 2)],
    ("slice_resnet", (96, 80)): [(24, 20), (12, 10), (6, 5), (3, 3)],
}


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
@pytest.mark.parametrize(("name", "config"), ACAT_CASES, ids=ACAT_IDS)
def test_acat_attention_maps_for_two_input_sizes(name, config, size):
    model = _build(name, config)
    assert model.attention_maps() == {}
    x, s = _inputs(2, 3, *size)
    for mode in (model.train, model.eval):
        mode()
        out = model(x, s)
        assert out.shape == (2, len(model.class_names)) and torch.isfinite(out).all()
        maps = model.attention_maps()
        assert set(maps) == {"early", "middle", "late", "fused", "slices"}
        for key, hw in zip(("early", "middle", "late", "fused"), EXPECTED_MAP_SIZES[(config["backbone"], size)]):
            assert maps[key].shape == (2, 3, 1, *hw), key
        assert maps["slices"].shape == (2, 3)
        for key, m in maps.items():
            assert not m.requires_grad, key
            assert ((m > 0) & (m < 1)).all(), key


def test_acat_brain_attention_maps_follow_a_mirrored_scan():
    model = _build("acat", {"backbone": "brain_mtl", "widths": WIDTHS}).eval()
    x, s = _inputs(1, 2, 64, 48)
    model(x, s)
    maps = model.attention_maps()
    model(x.flip(-1), s.flip(-1))
    mirrored = model.attention_maps()
    for key in ("early", "middle", "late", "fused"):
        torch.testing.assert_close(mirrored[key], maps[key].flip(-1))
    # per-hemisphere masks make the map differ between the two sides
    assert not torch.allclose(maps["early"], maps["early"].flip(-1))


def test_acat_combines_every_mask_as_f_plus_f_times_s_exactly():
    model = _build("acat", {"backbone": "lung_resnet_small", "slice_hidden": 8}).eval()
    stages = model.image_branch.stages
    outputs, inputs, masks = {}, {}, {}
    for i, stage in enumerate(stages):
        stage.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o.clone()))
        stage.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].clone()))
    for k, attention in enumerate(model.attention):
        attention.register_forward_hook(lambda m, a, o, k=k: masks.__setitem__(k, o))
    slice_input = []
    model.slice_attention.register_forward_pre_hook(lambda m, a: slice_input.append(a[0]))
    x, s = _inputs()
    model(x, s)
    for k, i in enumerate(model.attention_stages):
        f, g, mask = outputs[i], inputs[i + 1], masks[k]
        assert torch.equal(g, f + f * mask), i
        assert not torch.equal(g, f)
    # the fused mask: mean-pooled stage masks -> 1x1 conv -> sigmoid, applied to the last feature map
    last = outputs[len(stages) - 1]
    size = last.shape[-2:]
    stacked = torch.cat([F.adaptive_avg_pool2d(masks[k], size) for k in range(3)], dim=1)
    fused = torch.sigmoid(model.fusion(stacked))
    torch.testing.assert_close(model.attention_maps()["fused"].reshape(6, 1, *size), fused, rtol=0, atol=0)
    expected = global_average_pool(last + last * fused).reshape(2, 3, -1)
    torch.testing.assert_close(slice_input[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize(("backbone", "config"), [("brain_mtl", {"widths": WIDTHS}), ("lung_resnet_small", {})])
def test_acat_with_vanishing_masks_and_equal_slice_weights_is_the_baseline(backbone, config):
    baseline = _build(backbone, config, seed=5)
    _randomise_batch_norm(baseline)
    baseline.eval()
    model = _build("acat", {"backbone": backbone, **config}, seed=6).eval()
    copied = model.load_image_branch_from(baseline)
    assert set(copied) == {f"image_branch.{k}" for k in model.image_branch.state_dict()} | {
        f"head.{k}" for k in model.head.state_dict()}
    with torch.no_grad():
        for attention in model.attention:
            attention.conv.bias.fill_(-1e4)  # sigmoid(-1e4) == 0 in float32: every S_i is exactly 0
        model.fusion.bias.fill_(-1e4)
        model.slice_attention.mlp[-1].weight.zero_()  # every slice weight 1/2: the weighted mean is the mean
        model.slice_attention.mlp[-1].bias.zero_()
    x, s = _inputs()
    torch.testing.assert_close(model(x, s), baseline(x), rtol=1e-5, atol=1e-6)
    assert (model.attention_maps()["fused"] == 0).all()


def test_load_image_branch_from_copies_the_baseline_weights():
    baseline = _build("brain_mtl", {"widths": WIDTHS}, seed=1)
    _randomise_batch_norm(baseline)
    model = _build("acat", {"backbone": "brain_mtl", "widths": WIDTHS}, seed=2)
    saliency_before = {k: v.clone() for k, v in model.saliency_branch.state_dict().items()}
    assert not torch.equal(model.image_branch.stages[0].conv.weight, baseline.backbone.stages[0].conv.weight)
    copied = model.load_image_branch_from(baseline)
    assert "image_branch.stages.0.conv.weight" in copied and "head.lesion.0.weight" in copied
    assert "image_branch.stages.1.0.bn.running_var" in copied
    own = model.state_dict()
    source = {**{f"image_branch.{k}": v for k, v in baseline.backbone.state_dict().items()},
              **{f"head.{k}": v for k, v in baseline.head.state_dict().items()}}
    assert set(copied) == set(source)
    for name in copied:
        assert torch.equal(own[name], source[name]), name
    # copies, not shared tensors: training ACAT must not change the baseline
    assert own["image_branch.stages.0.conv.weight"].data_ptr() != baseline.backbone.stages[0].conv.weight.data_ptr()
    for k, v in model.saliency_branch.state_dict().items():
        assert torch.equal(v, saliency_before[k]), k

    with pytest.raises(ValueError, match="differs"):
        model.load_image_branch_from(_build("brain_mtl", {"widths": (4, 4, 8, 8, 8, 8, 16)}))
    with pytest.raises(ValueError, match="differs"):
        model.load_image_branch_from(_build("lung_resnet_small", {}))


def test_acat_saliency_branch_stops_at_the_last_attention_stage():
    brain = _build("acat", {"backbone": "brain_mtl", "widths": WIDTHS})
    lung = _build("acat", {"backbone": "lung_resnet_small"})
    assert len(brain.image_branch.stages) == 7 and len(brain.saliency_branch) == 5
    assert len(lung.image_branch.stages) == 5 and len(lung.saliency_branch) == 4
    # every parameter gets a gradient (distributed training requires it)
    x, s = _inputs()
    for model in (brain, lung):
        model(x, s)[:, 0].sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, missing


def test_acat_forward_heads_and_input_checks():
    model = _build("acat", {"backbone": "brain_mtl", "widths": WIDTHS}).eval()
    x, s = _inputs()
    heads = model.forward_heads(x, s)
    assert heads["lesion"].shape == (2, 2) and heads["side"].shape == (2, 3)
    torch.testing.assert_close(model(x, s), four_class_log_probs(heads["lesion"], heads["side"]))
    with pytest.raises(ValueError, match="saliency map must have the scan's shape"):
        model(x, s[:, :2])
    with pytest.raises(TypeError, match="brain"):
        _build("acat", {"backbone": "lung_resnet_small"}).forward_heads(x, s)
    with pytest.raises(ValueError, match="baseline classifier"):
        create_model("acat", backbone="autoencoder")


# ---------------------------------------------------------------- autoencoder

def test_autoencoder_latent_shape_range_and_scan_input():
    torch.manual_seed(0)
    ae = create_model("autoencoder").eval()
    assert ae.config == {"channels": [6, 12, 16], "strides": [1, 2, 2]}
    x = torch.rand(6, 1, 64, 48)
    z = ae.encode(x)
    assert z.shape == (6, 16, 16, 12)
    out = ae.decode(z)
    assert out.shape == (6, 1, 64, 48)
    assert (out >= 0).all() and (out <= 1).all() and out.std() > 0
    torch.testing.assert_close(ae(x), out)
    # a scan (B, S, 1, H, W) is handled slice by slice and keeps its leading dims
    scan = x.reshape(2, 3, 1, 64, 48)
    z_scan = ae.encode(scan)
    assert z_scan.shape == (2, 3, 16, 16, 12)
    torch.testing.assert_close(z_scan, z.reshape(2, 3, 16, 16, 12))
    torch.testing.assert_close(ae.decode(z_scan), out.reshape(2, 3, 1, 64, 48))
    assert ae(scan).shape == scan.shape
    # sizes that are not multiples of 4 still come back at full size
    assert ae(torch.rand(1, 1, 66, 50)).shape == (1, 1, 66, 50)
    with pytest.raises(ValueError, match="expected"):
        ae.encode(torch.rand(64, 48))


def test_autoencoder_gradients_reach_the_latent():
    torch.manual_seed(0)
    ae = SliceAutoencoder().train()
    z = ae.encode(torch.rand(2, 1, 32, 32)).detach().requires_grad_(True)
    ae.decode(z).mean().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_brain_mtl_is_exported():
    assert isinstance(create_model("brain_mtl", widths=WIDTHS), BrainMTL)
