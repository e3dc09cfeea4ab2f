"""The counterfactual saliency (paper Sec. 3.1) on a classifier trained here on a toy problem."""

from __future__ import annotations

import threading

import pytest
import torch

from ACATLogic.errors import Cancelled
from ACATLogic.saliency.counterfactual import CounterfactualSaliency

from toy import ShuffleAutoencoder, TinyScanClassifier, blob_scans, train


@pytest.fixture(scope="module")
def blob_model():
    torch.manual_seed(0)
    x, y, _ = blob_scans(64, seed=1)
    model = train(TinyScanClassifier(), x, y)
    xt, yt, _ = blob_scans(32, seed=2)
    accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    assert accuracy >= 0.95, accuracy  # the toy problem is learnt
    return model


def _one_blob_scan():
    x, y, c = blob_scans(40, seed=5)
    k = int(torch.nonzero(y == 1)[0])
    return x[k:k + 1], c[k]


def test_counterfactual_removes_the_blob_and_saliency_peaks_there(blob_model):
    x, (r, c) = _one_blob_scan()
    method = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), alpha=1.0, steps=20, step_size=0.5)
    assert blob_model(x).softmax(-1)[0, 1] > 0.9
    result = method.explain(x, targets=[0])
    traj = result.trajectory[0, 0]  # (steps + 1, C)
    assert traj[0, 0] < 0.1 and traj[-1, 0] > 0.5  # moved from "blob" to "none"
    assert result.reached_step[0, 0] > 0
    assert traj[result.reached_step[0, 0], 0] > 0.5 and traj[result.reached_step[0, 0] - 1, 0] <= 0.5
    sal = result.saliency[0, :, 0]  # (S, H, W)
    assert sal.max() == 1.0 and sal.min() >= 0
    peak = torch.nonzero(sal.mean(0) == sal.mean(0).max())[0]
    assert abs(int(peak[0]) - int(r)) <= 3 and abs(int(peak[1]) - int(c)) <= 3
    # the blob region changed more than the rest of the image
    inside = sal[:, r - 2:r + 3, c - 2:c + 3].mean()
    assert inside > 5 * sal.mean()


def test_loss_decreases_with_paper_defaults(blob_model):
    x, _ = _one_blob_scan()
    method = CounterfactualSaliency(blob_model, ShuffleAutoencoder())  # alpha 100, 20 steps, step 0.1
    result = method.explain(x, targets=[0])
    p_none = result.trajectory[0, 0, :, 0]
    assert p_none[0] < 0.01 and p_none[-1] > 0.5  # reached the target class
    losses = result.losses[0, 0]
    assert losses.shape == (20,) and losses[-1] < 0.2 * losses[0]  # the objective decreases
    assert result.reached_step[0, 0] >= 1
    # the L1 term keeps z close to E(x): later steps pull back slightly, never past the decision
    assert p_none[result.reached_step[0, 0]:].min() > 0.5


def test_batched_targets_equal_sequential(blob_model):
    x, _, _ = blob_scans(3, seed=9)
    method = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), alpha=1.0, steps=8, step_size=0.3)
    batched = method.explain(x)
    for i, t in enumerate(batched.targets):
        single = method.explain(x, targets=[t])
        torch.testing.assert_close(single.counterfactuals[0], batched.counterfactuals[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(single.trajectory[0], batched.trajectory[i], atol=1e-5, rtol=0)
    # scans one at a time, too
    chunked = method.explain(x, batch_scans=1)
    torch.testing.assert_close(chunked.saliency, batched.saliency, atol=1e-5, rtol=0)


def test_adam_and_image_reference_options(blob_model):
    x, _ = _one_blob_scan()
    adam = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), alpha=1.0, steps=20, step_size=0.05,
                                  optimizer="adam", reference="image")
    result = adam.explain(x, targets=[0])
    assert result.trajectory[0, 0, -1, 0] > 0.5
    torch.testing.assert_close(result.reference, x)  # exact AE: reference = x either way


def test_class_agnostic_saliency_and_call_interface(blob_model):
    x, _ = _one_blob_scan()
    method = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), alpha=1.0, steps=5, step_size=0.5)
    sal = method(x)
    assert sal.shape == x.shape and torch.isfinite(sal).all()
    # the target already reached (class 1) changes almost nothing; the mean is over both targets
    result = method.explain(x)
    assert result.targets == [0, 1] and result.reached_step[1, 0] == 0
    torch.testing.assert_close(sal, result.saliency)


def test_models_are_left_untouched(blob_model):
    before = {k: v.clone() for k, v in blob_model.state_dict().items()}
    flags = [p.requires_grad for p in blob_model.parameters()]
    CounterfactualSaliency(blob_model, ShuffleAutoencoder(), steps=3)(blob_scans(1, seed=3)[0])
    for k, v in blob_model.state_dict().items():
        assert torch.equal(v, before[k])
    assert [p.requires_grad for p in blob_model.parameters()] == flags
    assert all(p.grad is None for p in blob_model.parameters())


def test_cancel_stops_the_loop(blob_model):
    flag = threading.Event()
    calls = []

    def progress(f, m):
        calls.append(f)
        if len(calls) == 3:
            flag.set()

    method = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), steps=20)
    with pytest.raises(Cancelled):
        method.explain(blob_scans(1, seed=3)[0], progress=progress, cancel=flag)
    assert len(calls) == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="optimizer"):
        CounterfactualSaliency(TinyScanClassifier(), ShuffleAutoencoder(), optimizer="lbfgs")
    method = CounterfactualSaliency(TinyScanClassifier(), ShuffleAutoencoder())
    with pytest.raises(ValueError, match="targets"):
        method.explain(torch.zeros(1, 2, 1, 16, 16), targets=[5])
    with pytest.raises(ValueError, match=r"\(B, S, 1, H, W\)"):
        method.explain(torch.zeros(2, 16, 16))


def test_bf16_autocast_stays_close_to_fp32(blob_model):
    """Mixed precision is an option; this measures what it changes on the toy (CPU bf16)."""
    x, (r, c) = _one_blob_scan()
    kwargs = dict(alpha=1.0, steps=20, step_size=0.5)
    full = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), **kwargs).explain(x, targets=[0])
    half = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), autocast_dtype=torch.bfloat16,
                                  **kwargs).explain(x, targets=[0])
    assert half.trajectory[0, 0, -1, 0] > 0.5 and half.saliency.dtype == torch.float32
    assert (half.saliency - full.saliency).abs().max() < 0.01  # measured: 0.002
    peak = torch.nonzero(half.saliency[0, :, 0].mean(0) == half.saliency[0, :, 0].mean(0).max())[0]
    assert abs(int(peak[0]) - int(r)) <= 3 and abs(int(peak[1]) - int(c)) <= 3


# ---------------------------------------------------------------------------------------------------------
# Residual decoding, decision targets, early stopping (the default "residual" variant)
class LeftQuarterClassifier(torch.nn.Module):
    """Reads only the left quarter of every slice: logits [-(mean - 0.5) * 40, 0] over that region, so a
    bright left quarter says "class 1" and the other three quarters never matter (zero gradient there)."""

    class_names = ("healthy", "finding")

    def forward(self, x):
        w = x.shape[-1] // 4
        score = (x[..., :w].mean(dim=(1, 2, 3, 4)) - 0.5) * 40
        return torch.stack([-score, torch.zeros_like(score)], dim=1)


def _bright_left(n=2, size=32, slices=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.1 * torch.rand(n, slices, 1, size, size, generator=g)
    x[..., : size // 4] += 0.3
    return x


@pytest.mark.parametrize("autoencoder", ["shuffle", "conv"])
def test_residual_decoding_leaves_unchanged_voxels_exactly_equal(autoencoder):
    from ACATLogic.models.autoencoder import SliceAutoencoder
    from ACATLogic.saliency.counterfactual import decision_targets

    torch.manual_seed(0)
    ae = ShuffleAutoencoder() if autoencoder == "shuffle" else SliceAutoencoder().eval()
    x = _bright_left(size=128)
    method = CounterfactualSaliency(LeftQuarterClassifier(), ae, start="image", optimizer="normalised",
                                    step_size=0.5, alpha=1.0, early_stop=True, num_classes=2)
    result = method.explain(x, targets=decision_targets(0))
    assert torch.equal(result.reference, x)
    neg = result.counterfactuals[0]
    assert (result.target_probability[0, :, 0] < 0.5).all()  # it had to move...
    assert (result.target_probability[0, :, -1] >= 0.8).all()  # ...and reached healthy
    changed = neg != x
    assert changed[..., :32].any()
    # the right quarter is beyond the classifier's view and the decoder's reach: bit for bit the input
    assert torch.equal(neg[..., 96:], x[..., 96:])
    # the positive target (already reached at step 0: "finding" is read) is left exactly as it was
    assert (result.stopped_step[1] == 0).all() and torch.equal(result.counterfactuals[1], x)
    assert float(result.maps[1].abs().max()) == 0.0
    # class-agnostic: the negative map alone, normalised again (the reached target adds zeros)
    torch.testing.assert_close(result.saliency, result.maps[0])


def test_early_stop_freezes_each_pair_and_saves_steps():
    from ACATLogic.saliency.counterfactual import decision_targets

    x = _bright_left(3)
    x[1, ..., :8] += 0.15  # brighter: needs more steps
    kwargs = dict(start="image", optimizer="normalised", step_size=0.2, alpha=1.0, num_classes=2)
    early = CounterfactualSaliency(LeftQuarterClassifier(), ShuffleAutoencoder(), early_stop=True, **kwargs)
    full = CounterfactualSaliency(LeftQuarterClassifier(), ShuffleAutoencoder(), early_stop=False, **kwargs)
    a = early.explain(x, targets=decision_targets(0))
    b = full.explain(x, targets=decision_targets(0))
    stop = a.stopped_step[0]
    assert (stop > 0).all() and (stop < 20).all() and stop[1] > stop[0]
    for scan in range(3):
        k = int(stop[scan])
        assert a.target_probability[0, scan, k] >= 0.8 and a.target_probability[0, scan, k - 1] < 0.8
        # the probabilities repeat once frozen; the run without early stop matches it up to the stop
        assert torch.allclose(a.target_probability[0, scan, k:], a.target_probability[0, scan, k])
        torch.testing.assert_close(a.target_probability[0, scan, :k + 1], b.target_probability[0, scan, :k + 1])
    assert (b.stopped_step == 20).all()


def test_decision_target_log_probability():
    from ACATLogic.saliency.counterfactual import target_log_prob

    log_probs = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    lp = target_log_prob(log_probs.repeat(2, 1), torch.tensor([0, ~0]))
    torch.testing.assert_close(lp.exp(), torch.tensor([0.1, 0.9]))


def test_normalised_and_paper_steps_reach_the_target_at_different_speeds(blob_model):
    x, _ = _one_blob_scan()
    paper = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), start="image").explain(x, targets=[0])
    normalised = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), start="image", optimizer="normalised",
                                        step_size=0.2, early_stop=True).explain(x, targets=[0])
    assert int(normalised.stopped_step[0, 0]) < 20 and normalised.target_probability[0, 0, -1] >= 0.8
    assert paper.stopped_step[0, 0] == 20  # no early stop in the paper's settings


def test_context_is_passed_per_scan():
    """A classifier with a second input (ACAT's saliency) gets each scan's own, also after early stops."""
    seen = []

    class WithContext(torch.nn.Module):
        class_names = ("healthy", "finding")

        def forward(self, x, context):
            seen.append(context[:, 0, 0, 0, 0].tolist())
            return LeftQuarterClassifier()(x)

    x = _bright_left(2)
    x[1, ..., :8] += 0.15
    context = torch.arange(2.0).view(2, 1, 1, 1, 1).expand(2, 3, 1, 32, 32)
    CounterfactualSaliency(WithContext(), ShuffleAutoencoder(), start="image", optimizer="normalised",
                           step_size=0.2, alpha=1.0, early_stop=True, num_classes=2).explain(
        x, targets=[0], context=context)
    assert seen[0] == [0.0, 1.0] and seen[-1] == [1.0]  # scan 0 stopped first; scan 1 kept its own context


def test_sparsity_keeps_the_change_where_the_decision_is(blob_model):
    """The proximal L1 step (``sparsity``): far fewer voxels change, the change sits on the blob, the target is
    still reached; without it the normalised steps move nearly every latent value."""
    x, (r, c) = _one_blob_scan()
    kwargs = dict(start="image", optimizer="normalised", step_size=0.2, alpha=1.0, early_stop=True)
    dense = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), **kwargs).explain(x, targets=[0])
    sparse = CounterfactualSaliency(blob_model, ShuffleAutoencoder(), sparsity=0.5, **kwargs).explain(x, targets=[0])
    for result in (dense, sparse):
        assert result.target_probability[0, 0, -1] >= 0.8  # both reach "none"
    changed_dense = (dense.counterfactuals[0] != x).sum().item()
    changed_sparse = (sparse.counterfactuals[0] != x).sum().item()
    assert 0 < changed_sparse < 0.5 * changed_dense, (changed_sparse, changed_dense)
    change = (sparse.counterfactuals[0] - x).abs()[0, :, 0]  # (S, H, W)
    near = change[:, max(r - 3, 0):r + 4, max(c - 3, 0):c + 4].sum()
    assert near > 0.5 * change.sum()  # most of the change is on the blob
    with pytest.raises(ValueError, match="sparsity"):
        CounterfactualSaliency(blob_model, ShuffleAutoencoder(), sparsity=1.0)
    with pytest.raises(ValueError, match="normalised"):
        CounterfactualSaliency(blob_model, ShuffleAutoencoder(), sparsity=0.3, optimizer="sgd")


class _GainAutoencoder(torch.nn.Module):
    """Exactly invertible, with a decoder that amplifies a band of rows ``gain`` times (as a real decoder reacts
    most at sharp edges): a latent step there moves the image ``gain`` times as much."""

    def __init__(self, band: slice, gain: float = 6.0, size: int = 32):
        super().__init__()
        g = torch.ones(1, 1, size, size)
        g[:, :, band] = gain
        self.register_buffer("g", g)

    def encode(self, x):
        return torch.nn.functional.pixel_unshuffle(x / self.g, 4)

    def decode(self, z):
        return torch.nn.functional.pixel_shuffle(z, 4) * self.g


def test_whitening_takes_the_decoders_gain_out_of_the_map(blob_model):
    """``whiten``: the change divided by the decoder's gain (estimated from random latent steps). A band the
    decoder amplifies 6x dominates the plain map; the whitened map peaks on the blob, and the counterfactual
    images themselves are the same."""
    x, (r, c) = _one_blob_scan()
    band = slice(0, 6) if r >= 16 else slice(26, 32)  # rows far from the blob
    kwargs = dict(start="image", optimizer="normalised", step_size=0.2, alpha=1.0, early_stop=True)
    ae = _GainAutoencoder(band)
    plain = CounterfactualSaliency(blob_model, ae, **kwargs).explain(x, targets=[0])
    white = CounterfactualSaliency(blob_model, ae, whiten=True, **kwargs).explain(x, targets=[0])
    torch.testing.assert_close(white.counterfactuals, plain.counterfactuals)  # only the map differs
    assert white.target_probability[0, 0, -1] >= 0.8

    def share_in_band(result):
        m = result.maps[0, 0, :, 0]  # (S, H, W)
        return (m[:, band].sum() / m.sum()).item()

    def peak(result):
        m = result.maps[0, 0, :, 0].mean(0)
        return [int(i) for i in torch.nonzero(m == m.max())[0]]

    assert share_in_band(plain) > 0.5  # 6 of 32 rows hold most of the plain map
    assert share_in_band(white) < 0.5 * share_in_band(plain)
    pr, pc = peak(white)
    assert abs(pr - int(r)) <= 3 and abs(pc - int(c)) <= 3, (peak(white), (r, c))
    # the same scan gives the same whitened map (the probes have a fixed seed)
    again = CounterfactualSaliency(blob_model, ae, whiten=True, **kwargs).explain(x, targets=[0])
    torch.testing.assert_close(again.maps, white.maps)
    # the unwhitened class-agnostic map (an ACAT classifier's input) comes back from the whitened run
    torch.testing.assert_close(white.class_agnostic(whiten=False), plain.class_agnostic(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(white.class_agnostic(), plain.class_agnostic(), atol=1e-3)
    assert plain.gain is None and white.gain.shape == x.shape
    with pytest.raises(ValueError, match="not whitened"):
        plain.class_agnostic(whiten=True)


def test_a_whitened_map_does_not_depend_on_the_batching(blob_model):
    """The decoder's gain is measured with the same probes for every chunk, so a scan's whitened map is the
    same whether it is optimised alone or beside others (CPU, GPU and training batch differently)."""
    x, _, _ = blob_scans(3, seed=7)
    kwargs = dict(start="image", optimizer="normalised", step_size=0.2, alpha=1.0, steps=3, whiten=True)
    method = CounterfactualSaliency(blob_model, _GainAutoencoder(slice(0, 6)), **kwargs)
    together = method.explain(x, targets=[0], batch_scans=3)
    alone = method.explain(x, targets=[0], batch_scans=1)
    torch.testing.assert_close(together.gain, alone.gain)
    torch.testing.assert_close(together.maps, alone.maps, rtol=1e-5, atol=1e-6)
