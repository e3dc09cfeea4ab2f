"""BatchNorm folded into the convolutions (`ACATLogic.fold_batch_norm`): the same functions, faster loops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ACATLogic.bundle import load_bundle
from ACATLogic.explain import Explainer
from ACATLogic.fold_batch_norm import fold_batch_norm, folded_if_equal
from ACATLogic.saliency.counterfactual import CounterfactualSaliency

MODELS = Path(__file__).resolve().parents[1] / "Resources" / "Models"
BUNDLES = ("brain-stroke-phantom", "lung-covid-phantom")


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.fixture(scope="module", params=BUNDLES)
def bundle(request):
    return load_bundle(MODELS / request.param)


def probe(bundle, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, bundle.spec.slices, 1, *bundle.spec.size), generator=g)


def test_folded_models_compute_the_same_and_leave_the_originals_alone(bundle):
    baseline, autoencoder = bundle.models["baseline"].eval(), bundle.models["autoencoder"].eval()
    before = {k: v.clone() for k, v in baseline.state_dict().items()}
    n_bn = batch_norms(baseline)
    fast_baseline, fast_autoencoder = fold_batch_norm(baseline), fold_batch_norm(autoencoder)
    assert n_bn > 0 and batch_norms(fast_baseline) == 0 and batch_norms(fast_autoencoder) == 0
    assert batch_norms(baseline) == n_bn and all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())
    assert not any(p.requires_grad for p in fast_baseline.parameters())
    x = probe(bundle)
    with torch.no_grad():
        torch.testing.assert_close(fast_baseline(x), baseline(x), atol=1e-4, rtol=1e-4)
        z = autoencoder.encode(x.flatten(0, 1))
        torch.testing.assert_close(fast_autoencoder.encode(x.flatten(0, 1)), z, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast_autoencoder.decode(z), autoencoder.decode(z), atol=1e-4, rtol=1e-4)


def test_counterfactuals_through_folded_models_match(bundle):
    x = probe(bundle, n=1, seed=1)
    kwargs = dict(steps=4, num_classes=len(bundle.labels))
    original = CounterfactualSaliency(bundle.models["baseline"].eval(), bundle.models["autoencoder"].eval(),
                                      **kwargs).explain(x)
    folded = CounterfactualSaliency(fold_batch_norm(bundle.models["baseline"]),
                                    fold_batch_norm(bundle.models["autoencoder"]), **kwargs).explain(x)
    # Float rounding only, but 4 gradient steps through ReLUs and max-pools (ties in flat regions) carry it
    # on: the size of switching the models to channels-last memory (measured on the shipped brain bundle
    # 0.2.0, one thread / two: saliency max 1.2e-2 / 1.2e-2, mean 6.8e-4 there; 2.4e-2 / 1.1e-2 and 8.7e-4 /
    # 8.5e-4 here, correlation 0.9997 - its full-resolution latent spreads the map over more pixels than the
    # 0.1.0 bundle's H/4 latent, whose numbers were 8e-3 and 5e-5). 5e-3 is 0.4 HU in the brain window.
    torch.testing.assert_close(folded.counterfactuals, original.counterfactuals, atol=5e-3, rtol=0)
    torch.testing.assert_close(folded.trajectory, original.trajectory, atol=1e-4, rtol=0)
    difference = (folded.saliency - original.saliency).abs()
    assert float(difference.max()) < 5e-2 and float(difference.mean()) < 2e-3
    maps = torch.stack([folded.saliency.flatten(), original.saliency.flatten()])
    assert float(torch.corrcoef(maps)[0, 1]) > 0.999  # the same map, not merely a close one


def test_explainer_loops_use_the_folded_copies(bundle):
    explainer = Explainer(bundle, device="cpu")
    assert batch_norms(explainer.fast_baseline) == 0 and batch_norms(explainer.fast_autoencoder) == 0
    assert batch_norms(explainer.baseline) > 0  # Grad-CAM reads the original's layers


class NormFirst(nn.Module):
    """``conv``/``bn`` names, but the BatchNorm runs on the input: folding would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_a_block_that_does_not_fit_the_pattern_keeps_its_batch_norm():
    torch.manual_seed(0)
    model = NormFirst()
    with torch.no_grad():  # statistics far from the identity, so a wrong fold shows
        model.bn.running_mean.uniform_(-2, 2)
        model.bn.running_var.uniform_(0.2, 4)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    assert folded_if_equal(model, lambda m: m(x)) is model
    sequential = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with torch.no_grad():
        sequential[1].running_var.uniform_(0.2, 4)
    folded = folded_if_equal(sequential, lambda m: m(x))
    assert folded is not sequential and batch_norms(folded) == 0
    torch.testing.assert_close(folded(x), sequential(x), atol=1e-5, rtol=1e-5)


def test_a_model_in_training_mode_is_not_folded():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    assert folded_if_equal(model, lambda m: m(torch.rand(2, 1, 5, 5))) is model
