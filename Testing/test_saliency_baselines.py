"""The comparison saliency methods: values against captum, the papers' properties, and toy semantics.

Tiny models defined here follow the classifier interface of ACATLogic/models (x: (B, S, 1, H, W) ->
logits, ``gradcam_layer``, ``layer_output_to_slices``); captum is an independent implementation used
only as a reference.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ACATLogic.saliency.base import SaliencyMethod, normalise_per_scan
from ACATLogic.saliency.gradcam import GradCAM
from ACATLogic.saliency.gradient import Gradient
from ACATLogic.saliency.integrated_gradients import IntegratedGradients, gauss_legendre_on_unit_interval
from ACATLogic.saliency.latent_shift import LatentShift

captum_attr = pytest.importorskip("captum.attr")

SHAPE = (2, 3, 1, 16, 16)  # (B, S, 1, H, W)
REGION = (1, slice(4, 8), slice(8, 12))  # slice 1, rows 4:8, columns 8:12


class SmallCNN(nn.Module):
    """A smooth (SiLU) 2-D backbone on every slice, mean over slices, 3 classes; dropout for mode tests."""

    class_names = ("a", "b", "c")

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU())
        self.last = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.SiLU())
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():  # non-trivial running statistics, so train and eval mode differ
            self.stem[1].running_mean.uniform_(-0.2, 0.2)
            self.stem[1].running_var.uniform_(0.5, 2.0)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.last

    def layer_output_to_slices(self, t: torch.Tensor, batch: int, slices: int) -> torch.Tensor:
        return t.reshape(batch, slices, *t.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        features = self.last(self.stem(x.reshape(b * s, *x.shape[2:]))).mean(dim=(2, 3))
        return self.head(self.drop(features.reshape(b, s, -1).mean(dim=1)))


class RegionModel(nn.Module):
    """Two classes; logit_1 = scale * (mean intensity of REGION - 0.5), logit_0 = 0."""

    class_names = ("dark", "bright")

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, rows, cols = REGION
        evidence = self.scale * (x[:, s, 0, rows, cols].mean(dim=(1, 2)) - 0.5)
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


class PixelShuffleAE(nn.Module):
    """An exactly invertible "autoencoder": (N, 1, H, W) <-> (N, 16, H/4, W/4)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 4)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, 4)


class BlobDetector(nn.Module):
    """Class 1 = "a bright blob somewhere", from a stride-2 conv layer (the Grad-CAM layer).

    ``hemispheres=True`` follows the brain layout of ACATLogic/models: every slice is cut at the midline,
    images [left = x[..., W/2:], right = x[..., :W/2] mirrored], and `layer_output_to_slices` undoes it.
    """

    class_names = ("no blob", "blob")

    def __init__(self, hemispheres: bool) -> None:
        super().__init__()
        self.hemispheres = hemispheres
        conv = nn.Conv2d(1, 2, kernel_size=2, stride=2)
        with torch.no_grad():
            conv.weight[0].fill_(0.25)   # channel 0: local brightness
            conv.weight[1].fill_(-0.25)  # channel 1: local darkness below 0.5
            conv.bias.copy_(torch.tensor([0.0, 0.5]))
        self.features = nn.Sequential(conv, nn.ReLU())
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-4.0, 4.0], [4.0, -4.0]]))
            self.head.bias.zero_()

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.features

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c, h, w = x.shape
        if not self.hemispheres:
            return x.reshape(b * s, c, h, w)
        pair = (x[..., w // 2:], x[..., :w // 2].flip(-1))
        return torch.stack(pair, dim=2).reshape(b * s * 2, c, h, w // 2)

    def layer_output_to_slices(self, t: torch.Tensor, batch: int, slices: int) -> torch.Tensor:
        if not self.hemispheres:
            return t.reshape(batch, slices, *t.shape[1:])
        pairs = t.reshape(batch, slices, 2, *t.shape[1:])
        return torch.cat([pairs[:, :, 1].flip(-1), pairs[:, :, 0]], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pooled = self.features(self.to_images(x)).mean(dim=(2, 3))  # (B*S*k, 2)
        return self.head(pooled.reshape(b, -1, 2).mean(dim=1))


class ExtraInputModel(nn.Module):
    """A classifier with a second per-scan input, like the ACAT classifier's (x, saliency)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        if saliency.shape != x.shape:
            raise ValueError(f"saliency {tuple(saliency.shape)} does not match x {tuple(x.shape)}")
        b, s, _, h, w = x.shape
        pair = torch.cat([x, saliency], dim=2).reshape(b * s, 2, h, w)
        features = torch.tanh(self.conv(pair)).mean(dim=(2, 3)).reshape(b, s, -1).mean(dim=1)
        return self.head(self.drop(features))


def _scans(seed: int = 0) -> torch.Tensor:
    return torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed))


def _method(name: str, model: nn.Module):
    if name == "gradient":
        return Gradient(model)
    if name == "integrated_gradients":
        return IntegratedGradients(model, steps=8, batch_steps=3)
    if name == "gradcam":
        return GradCAM(model)
    if name == "latent_shift":
        return LatentShift(model, PixelShuffleAE(), max_lambda=1.0, refine_steps=2, frames=4)
    raise AssertionError(name)


METHODS = ["gradient", "integrated_gradients", "gradcam", "latent_shift"]


def _assert_valid_map(saliency: torch.Tensor, x: torch.Tensor) -> None:
    assert saliency.shape == x.shape and saliency.dtype == torch.float32
    assert torch.isfinite(saliency).all()
    assert saliency.min() >= 0 and saliency.max() <= 1
    assert torch.equal(saliency.reshape(x.shape[0], -1).amax(dim=1), torch.ones(x.shape[0]))
    assert not saliency.requires_grad


# --- the common contract ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_every_method_keeps_the_contract_and_leaves_the_model_untouched(name):
    model = SmallCNN()
    model.train()
    model.stem.eval()  # a mixed state (frozen batch-norm while fine-tuning) must come back exactly
    model.head.bias.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    requires = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _scans()
    method = _method(name, model)
    assert isinstance(method, SaliencyMethod)

    saliency = method(x, torch.tensor([0, 2]))

    _assert_valid_map(saliency, x)
    raw = method.raw(x, torch.tensor([0, 2]))  # the same map before normalisation
    assert raw.dtype == torch.float32 and raw.min() >= 0 and raw.amax() > 0
    assert torch.equal(normalise_per_scan(raw), saliency)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == requires
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # batch-norm running stats included
    # eval mode was used inside: dropout off, so a second call (still "in train mode") is identical
    assert torch.equal(method(x, torch.tensor([0, 2])), saliency)
    model.eval()
    assert torch.equal(method(x, torch.tensor([0, 2])), saliency)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", METHODS)
def test_every_method_works_with_a_fully_frozen_model_and_under_no_grad(name):
    model = SmallCNN().eval()
    reference = _method(name, model)(_scans(), 1)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        frozen = _method(name, model)(_scans(), 1)
    with torch.inference_mode():
        x = _scans()
        inference = _method(name, model)(x, 1)
    assert torch.allclose(frozen, reference, atol=1e-6)
    assert torch.allclose(inference.clone(), reference, atol=1e-6)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_int_and_per_scan_targets_agree_and_bad_targets_are_refused():
    model = SmallCNN().eval()
    x = _scans()
    method = Gradient(model)
    assert torch.equal(method(x, 2), method(x, torch.tensor([2, 2])))
    assert torch.equal(method(x, torch.tensor(2)), method(x, 2))
    both = method(x, torch.tensor([0, 1]))
    # scans are independent (eval mode); only the convolution's summation order depends on the batch size
    assert torch.allclose(both[:1], method(x[:1], 0), atol=1e-6)
    assert torch.allclose(both[1:], method(x[1:], 1), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        method(x, 3)
    with pytest.raises(ValueError, match="2 scans"):
        method(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError):
        method(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(B, S, 1, H, W\)"):
        method(x[:, 0], 0)


def test_normalise_per_scan():
    t = torch.zeros(3, 2, 1, 2, 2)
    t[0, 1, 0, 1, 1] = 4.0
    t[0, 0, 0, 0, 0] = 1.0
    t[2] = 1e-30
    out = normalise_per_scan(t)
    assert out[0, 1, 0, 1, 1] == 1 and out[0, 0, 0, 0, 0] == 0.25
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # an all-zero scan stays zero, not NaN
    assert torch.equal(out[2], torch.ones_like(out[2]))
    with pytest.raises(ValueError, match="non-negative"):
        normalise_per_scan(-t)
    with pytest.raises(ValueError, match="NaN"):
        normalise_per_scan(torch.full((1, 4), float("nan")))


def test_modules_behind_a_partial_run_in_eval_mode_and_batch_steps_1_keeps_the_batch_size():
    model = ExtraInputModel().train()
    classifier = functools.partial(model, saliency=_scans(5))  # accepts only the batch size B = 2
    x = _scans()
    ig = IntegratedGradients(classifier, steps=6, batch_steps=1)
    first = ig.attribute(x, 1)
    assert all(m.training for m in model.modules())
    assert torch.equal(ig.attribute(x, 1), first)  # dropout was off inside
    with pytest.raises(ValueError, match="does not match"):
        IntegratedGradients(classifier, steps=6, batch_steps=2).attribute(x, 1)
    with torch.no_grad():
        model.eval()
        other_class = 1 - classifier(x).argmax(dim=1)  # latent shift towards the class not predicted
        model.train()
    closure = lambda t: model(t, saliency=classifier.keywords["saliency"])  # noqa: E731 - found through its cell
    for method in (Gradient(classifier), Gradient(closure),
                   LatentShift(classifier, PixelShuffleAE(), max_lambda=0.5)):
        _assert_valid_map(method(x, other_class), x)
        assert all(m.training for m in model.modules())
        assert all(p.grad is None for p in model.parameters())


# --- agreement with captum ----------------------------------------------------------------------------

def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
def test_gradient_equals_captum_saliency():
    model = SmallCNN().eval()
    x, target = _scans(), torch.tensor([1, 2])
    theirs = captum_attr.Saliency(model).attribute(x, target=target, abs=True)
    method = Gradient(model)
    assert _relative_error(method.attribute(x, target).abs(), theirs) < 1e-6
    assert _relative_error(method.raw(x, target), theirs) < 1e-6
    assert torch.allclose(method(x, target), normalise_per_scan(theirs), atol=1e-6)


@pytest.mark.parametrize("steps, batch_steps", [(16, 5), (32, 8)])
def test_integrated_gradients_equal_captum_gauss_legendre(steps, batch_steps):
    model = SmallCNN().eval()
    x, target = _scans(), torch.tensor([2, 0])
    theirs = captum_attr.IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=steps,
                                                              method="gausslegendre")
    method = IntegratedGradients(model, steps=steps, batch_steps=batch_steps)
    assert _relative_error(method.attribute(x, target), theirs) < 1e-4
    assert torch.allclose(method(x, target), normalise_per_scan(theirs.abs()), atol=1e-4)


def test_integrated_gradients_with_an_image_baseline_equal_captum():
    model = SmallCNN().eval()
    x, baseline = _scans(), _scans(9) * 0.5
    theirs = captum_attr.IntegratedGradients(model).attribute(x, baselines=baseline, target=1, n_steps=12,
                                                              method="gausslegendre")
    ours = IntegratedGradients(model, steps=12, baseline=baseline, batch_steps=12).attribute(x, 1)
    assert _relative_error(ours, theirs) < 1e-4


def test_integrated_gradients_completeness_and_batching():
    model = SmallCNN().eval()
    with torch.no_grad():
        model.head.weight.mul_(20)  # logits that move by O(1) between black and the scan
    x, target = _scans(), torch.tensor([0, 1])
    attributions = IntegratedGradients(model, steps=64, batch_steps=16).attribute(x, target)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, target.view(-1, 1))[:, 0]
    total = attributions.reshape(2, -1).sum(dim=1)
    assert gap.abs().min() > 1e-2  # a non-trivial check
    assert torch.allclose(total, gap, rtol=1e-5, atol=1e-5), (total, gap)  # measured: 2e-7
    # the batching of path points changes nothing but memory
    one = IntegratedGradients(model, steps=64, batch_steps=1).attribute(x, target)
    all_at_once = IntegratedGradients(model, steps=64, batch_steps=64).attribute(x, target)
    assert torch.allclose(one, attributions, atol=1e-6) and torch.allclose(all_at_once, attributions, atol=1e-6)


def test_gauss_legendre_nodes_integrate_polynomials_exactly():
    alphas, weights = gauss_legendre_on_unit_interval(4)
    assert 0 < alphas.min() and alphas.max() < 1 and abs(weights.sum() - 1) < 1e-15
    for degree in range(8):  # exact up to degree 2n - 1 = 7
        assert abs((weights * alphas ** degree).sum() - 1 / (degree + 1)) < 1e-14


# --- toy semantics ------------------------------------------------------------------------------------

def _region_mask() -> torch.Tensor:
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    s, rows, cols = REGION
    mask[:, s, 0, rows, cols] = True
    return mask


@pytest.mark.parametrize("method_class", [Gradient, IntegratedGradients])
def test_gradient_methods_find_the_region_the_logit_reads(method_class):
    x = _scans(3)
    saliency = method_class(RegionModel())(x, 1)
    mask = _region_mask()
    assert torch.equal(saliency[~mask], torch.zeros(int((~mask).sum())))
    for b in range(2):
        assert mask[b].reshape(-1)[saliency[b].argmax()]
    if method_class is Gradient:  # d logit / dx = scale / |region| on every pixel of the region
        assert torch.equal(saliency[mask], torch.ones(int(mask.sum())))
    else:  # IG of a linear logit is exactly x * gradient: the map is x inside the region, rescaled
        expected = x[mask].reshape(2, -1) / x[mask].reshape(2, -1).amax(dim=1, keepdim=True)
        assert torch.allclose(saliency[mask].reshape(2, -1), expected, atol=1e-6)


def _blob_scans(blobs) -> torch.Tensor:
    """Dim noisy scans with one 2x2 bright blob each: blobs = [(slice, row, column), ...] per scan."""
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(4)) * 0.2
    for b, (s, r, c) in enumerate(blobs):
        x[b, s, 0, r:r + 2, c:c + 2] = 1.0
    return x


@pytest.mark.parametrize("hemispheres", [False, True])
@pytest.mark.parametrize("weights", ["scan", "slice"])
def test_gradcam_peaks_on_the_blob_on_the_correct_side(hemispheres, weights):
    # scan 0: blob on the image's low columns (the mirrored hemisphere); scan 1: high columns
    blobs = [(0, 6, 2), (2, 10, 12)]
    model = BlobDetector(hemispheres)
    x = _blob_scans(blobs)
    with torch.no_grad():
        assert (model(x)[:, 1] > model(_blob_scans([]))[:, 1]).all()  # the blob is evidence
    saliency = GradCAM(model, weights=weights)(x, 1)
    _assert_valid_map(saliency, x)
    for b, (s, r, c) in enumerate(blobs):
        peak = torch.nonzero(saliency[b] == 1)
        assert len(peak) > 0
        for slice_, _, row, col in peak.tolist():
            assert slice_ == s and r <= row < r + 2 and c <= col < c + 2, (b, peak.tolist())
        # bilinear upsampling from the 8x8 feature grid: the blob's neighbours are lit, far pixels are not
        assert saliency[b, s, 0, r:r + 2, c:c + 2].min() > 0.5
        mirrored = 15 - c - 1 if c < 8 else None  # where a forgotten un-mirroring would have put it
        if hemispheres and mirrored is not None:
            assert saliency[b, s, 0, r:r + 2, mirrored - 1:mirrored + 1].max() < 0.5


def test_gradcam_of_a_hemisphere_model_matches_a_hand_computed_map():
    model = BlobDetector(hemispheres=True)
    x = _blob_scans([(0, 6, 2), (2, 10, 12)])
    saliency = GradCAM(model)(x, 1)
    # by hand: mean pooling makes every gradient equal, alpha = +-4 / #positions; cam = ReLU(A0 - A1)
    avg = F.avg_pool2d(x.reshape(-1, 1, 16, 16), 2)
    cam = (avg - (0.5 - avg).relu()).relu()
    expected = normalise_per_scan(F.interpolate(cam, size=(16, 16), mode="bilinear",
                                                align_corners=False).reshape(SHAPE))
    assert torch.allclose(saliency, expected, atol=1e-6)


def test_gradcam_removes_its_hook_even_when_the_classifier_fails():
    class Failing(BlobDetector):
        def forward(self, x):
            self.features(self.to_images(x))
            raise RuntimeError("head exploded")

    model = Failing(hemispheres=False)
    with pytest.raises(RuntimeError, match="head exploded"):
        GradCAM(model)(_blob_scans([(0, 6, 2), (2, 10, 12)]), 1)
    assert not model.features._forward_hooks


def test_gradcam_through_a_wrapper_and_refuses_a_classifier_without_a_layer():
    model = BlobDetector(hemispheres=True)
    x = _blob_scans([(0, 6, 2), (2, 10, 12)])
    wrapped = functools.partial(model)
    assert torch.equal(GradCAM(wrapped)(x, 1), GradCAM(model)(x, 1))
    with pytest.raises(TypeError, match="gradcam_layer"):
        GradCAM(lambda t: model(t))


# --- latent shift -------------------------------------------------------------------------------------

def _bright_region_scans() -> torch.Tensor:
    x = _scans(7) * 0.8
    s, rows, cols = REGION
    x[:, s, 0, rows, cols] = 0.9  # mean 0.9: class "bright" with p = sigmoid(4)
    return x


def test_latent_shift_towards_dark_darkens_exactly_the_region():
    x = _bright_region_scans()
    model, ae = RegionModel().train(), PixelShuffleAE().train()
    method = LatentShift(model, ae, frames=5)
    saliency = method(x, 0)
    mask = _region_mask()
    # the shift is -lambda on the region's latent values only, so the map is 1 there and 0 elsewhere
    assert torch.equal(saliency, mask.float())
    frames = method.last_frames
    found = frames.lambdas[:, -1]
    # the region must lose 0.4 to cross p = 0.5; 4 bisection steps between 0.25 and 0.5 pin it to 1/64
    assert ((found > 0.4) & (found <= 0.4 + 0.25 / 16)).all(), found
    assert torch.allclose(frames.lambdas, found.unsqueeze(1) * torch.linspace(0, 1, 5))
    assert frames.images.shape == (2, 5, *SHAPE[1:])
    assert torch.equal(frames.images[:, 0], x)  # frame 0 is D(E(x)), exact for this autoencoder
    assert torch.allclose(frames.images[:, -1], x - found.view(2, 1, 1, 1, 1) * mask.float(), atol=1e-6)
    assert (frames.target_probability[:, -1] > 0.5).all() and frames.reached.all()
    assert (frames.target_probability[:, :-1] < 0.5).all()
    assert (frames.target_probability.diff(dim=1) > 0).all()
    assert model.training and ae.training and model.scale.grad is None


def test_latent_shift_per_scan_targets_and_a_scan_already_at_its_target():
    x = _bright_region_scans()
    s, rows, cols = REGION
    x[1, s, 0, rows, cols] = 0.2  # scan 1 is "dark"
    method = LatentShift(RegionModel(), PixelShuffleAE())
    saliency = method(x, torch.tensor([0, 1]))  # both towards the other class
    assert torch.equal(saliency, _region_mask().float())
    found = method.last_frames.lambdas[:, -1]
    assert 0.4 < found[0] <= 0.4 + 1 / 64 and 0.3 < found[1] <= 0.3 + 1 / 64, found
    assert torch.allclose(method.last_frames.images[1, -1, s, 0, rows, cols], 0.2 + found[1], atol=1e-6)
    # scan 0 is already "bright": nothing to shift, an all-zero map, no NaN
    saliency = method(x, torch.tensor([1, 1]))
    assert torch.equal(saliency[0], torch.zeros_like(saliency[0]))
    assert method.last_frames.lambdas[0].abs().max() == 0 and method.last_frames.reached[0]


def test_latent_shift_gives_up_at_max_lambda_and_accepts_a_fixed_sweep():
    x = _bright_region_scans()
    method = LatentShift(RegionModel(), PixelShuffleAE(), max_lambda=0.3, keep_frames=False)
    saliency = method(x, 0)
    assert torch.equal(saliency, _region_mask().float())
    assert torch.equal(method.last_frames.lambdas[:, -1], torch.full((2,), 0.3))
    assert not method.last_frames.reached.any() and method.last_frames.images is None
    fixed = LatentShift(RegionModel(), PixelShuffleAE(), lambdas=[0.1, 0.5, 0.2])
    assert torch.equal(fixed(x, 0), _region_mask().float())  # the max is the 0.5 frame's, everywhere
    s, rows, cols = REGION
    assert torch.allclose(fixed.last_frames.images[:, 1, s, 0, rows, cols], torch.full((2, 4, 4), 0.4), atol=1e-6)
    assert fixed.last_frames.target_probability[:, 1].gt(0.5).all() and fixed.last_frames.reached.all()
