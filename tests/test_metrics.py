"""Chapter 07's metrics (ddpm_lib.metrics), the shipped evaluation classifier and `python -m ddpm_lib evaluate`."""

import json

import numpy as np
import pytest
import torch

from ddpm_lib.checkpoint import CheckpointError, load_denoiser
from ddpm_lib.cli import main
from ddpm_lib.data import load_mnist
from ddpm_lib.metrics import (
    MnistClassifier,
    accuracy,
    augment,
    baseline_images,
    check_images,
    class_statistics,
    classify,
    compare,
    draw_difference,
    evaluate_images,
    features_distance,
    format_table,
    frechet_distance,
    gaussian_fit,
)
from ddpm_lib.pretrained import load_classifier, provenance, save_classifier, snapshot_paths


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()[0]


@pytest.fixture(scope="module")
def heldout():
    return load_mnist("heldout", verbose=False).tensors


# --- Fréchet distance -------------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(300, 16))
    assert features_distance(features, features) < 1e-8


def test_frechet_distance_is_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 8)), rng.normal(loc=0.5, scale=2.0, size=(150, 8))
    assert features_distance(a, b) == pytest.approx(features_distance(b, a), rel=1e-9)


def test_frechet_distance_matches_the_closed_form_for_two_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0, abs=1e-12)
    # N(0, I) vs N(mu, 4 I) in d dimensions: |mu|^2 + d (1 + 4 - 2*2)
    d, mu = 6, np.arange(6.0)
    assert frechet_distance(np.zeros(d), np.eye(d), mu, 4 * np.eye(d)) == pytest.approx(mu @ mu + d)
    # a full covariance, against the formula with an eigendecomposition (the matrices commute)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))
    s1, s2 = q @ np.diag([1.0, 2, 3, 4]) @ q.T, q @ np.diag([4.0, 1, 9, 1]) @ q.T
    expected = np.sum((np.sqrt([1.0, 2, 3, 4]) - np.sqrt([4.0, 1, 9, 1])) ** 2)
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_survives_singular_covariances():
    few = np.random.default_rng(3).normal(size=(5, 32))  # covariance of rank 4 in 32 dimensions
    value = features_distance(few, np.random.default_rng(4).normal(size=(5, 32)))
    assert np.isfinite(value) and value > 0


@pytest.mark.parametrize(
    "args",
    [
        (np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)),
        (np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)),
        (np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)),
    ],
)
def test_frechet_distance_rejects_mismatched_shapes(args):
    with pytest.raises(ValueError, match="means of shape"):
        frechet_distance(*args)


def test_gaussian_fit_rejects_a_single_sample():
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_fit(np.zeros((1, 4)))


# --- class statistics ----------------------------------------------------------------------------------


def test_class_statistics_extremes():
    uniform_onehot = np.eye(10)[np.arange(100) % 10]
    stats = class_statistics(uniform_onehot)
    assert stats["confident_share"] == 1.0 and stats["classes_present"] == 10
    assert stats["class_entropy_bits"] == pytest.approx(np.log2(10))
    assert stats["inception_score"] == pytest.approx(10.0)
    assert stats["max_class_ratio"] == pytest.approx(1.0) and stats["min_class_ratio"] == pytest.approx(1.0)
    collapsed = class_statistics(np.eye(10)[np.zeros(50, dtype=int)])
    assert collapsed["classes_present"] == 1 and collapsed["class_entropy_bits"] == 0.0
    assert collapsed["inception_score"] == pytest.approx(1.0)
    unsure = class_statistics(np.full((20, 10), 0.1))
    assert unsure["confident_share"] == 0.0 and unsure["inception_score"] == pytest.approx(1.0)


@pytest.mark.parametrize("probs", [np.ones((4, 9)) / 9, np.ones((4, 10)), np.ones(10) / 10])
def test_class_statistics_rejects_non_probabilities(probs):
    with pytest.raises(ValueError, match="probs must be"):
        class_statistics(probs)


# --- input checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, error, match",
    [
        (np.zeros((4, 1, 28, 28)), TypeError, "torch.Tensor"),
        (torch.zeros(4, 28, 28), ValueError, r"shape \(N, 1, 28, 28\)"),
        (torch.zeros(4, 3, 28, 28), ValueError, r"shape \(N, 1, 28, 28\)"),
        (torch.zeros(1, 1, 28, 28), ValueError, "N >= 2"),
        (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), TypeError, "float tensor"),
        (torch.full((4, 1, 28, 28), float("nan")), ValueError, "NaN"),
        (torch.rand(4, 1, 28, 28) * 255, ValueError, r"\[-1, 1\]"),
    ],
)
def test_metrics_reject_images_of_the_wrong_shape_or_range(images, error, match, classifier):
    with pytest.raises(error, match=match):
        check_images(images)
    with pytest.raises(error, match=match):
        classify(classifier, images)


def test_images_in_zero_one_pass_the_range_check_but_are_named_in_the_error_for_0_255():
    check_images(torch.rand(3, 1, 28, 28))  # [0, 1] lies inside [-1, 1]: the range check can't see it
    with pytest.raises(ValueError, match="reference"):
        check_images(torch.rand(3, 1, 28, 28) * 255, "reference")


# --- the classifier -------------------------------------------------------------------------------------


def test_shipped_classifier_is_above_the_bar_on_held_out_digits(classifier, heldout):
    images, labels = heldout
    assert accuracy(classifier, images, labels) >= 0.98
    record = load_classifier()[1]
    assert record["heldout_accuracy"] >= 0.98 and "train-classifier" in record["command"]


def test_classifier_features_and_probabilities(classifier, heldout):
    features, probs = classify(classifier, heldout[0][:7])
    assert features.shape == (7, 128) and probs.shape == (7, 10)
    assert features.dtype == np.float64 and np.allclose(probs.sum(1), 1)


def test_augment_keeps_shape_range_and_background():
    images = load_mnist("heldout", verbose=False).tensors[0][:8]
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5
    assert (out[:, :, 0, :] < -0.99).float().mean() > 0.9  # the border stays background
    again = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_classifier_round_trip_and_bad_files(tmp_path, classifier):
    path = save_classifier(classifier, tmp_path / "c.pt", {"summary": "test"})
    loaded, record = load_classifier(path)
    x = torch.zeros(2, 1, 28, 28)
    assert torch.equal(loaded(x), classifier(x)) and record == {"summary": "test"}
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_classifier(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_classifier(tmp_path / "missing.pt")


# --- comparisons, baselines, disjoint draws -----------------------------------------------------------------


@pytest.mark.slow
def test_baselines_order_floor_below_blur_below_noise(classifier, heldout):
    results = evaluate_images(classifier, baseline_images(100), heldout[0], draws=2)
    floor, blur, noise = (results[k]["frechet_distance"] for k in results)
    assert floor < blur < noise
    assert results["real digits (floor)"]["classes_present"] == 10
    table = format_table(results)
    assert "real digits (floor)" in table and "uniform noise" in table and "2 × 50:" in table


def _fake_features_and_probs(n, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    features = rng.normal(loc=shift, size=(n, 8))
    logits = rng.normal(size=(n, 10)) * 4
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return features, probs


def test_disjoint_draws_are_the_slices_and_their_mean_and_standard_error():
    features, probs = _fake_features_and_probs(40)
    reference = np.random.default_rng(9).normal(size=(60, 8))
    result = compare((features, probs), reference, draws=4)
    assert (
        result["n"] == 40 and result["reference_n"] == 60 and result["draws"] == 4 and result["draw_n"] == 10
    )
    expected = [features_distance(features[i * 10 : (i + 1) * 10], reference) for i in range(4)]
    assert result["draw_values"]["frechet_distance"] == pytest.approx(expected, rel=1e-12)
    assert result["draw_mean"]["frechet_distance"] == pytest.approx(np.mean(expected))
    assert result["draw_se"]["frechet_distance"] == pytest.approx(np.std(expected, ddof=1) / 2)
    # a share: the mean of the draws is the share of all n images, so the standard error belongs to it
    assert result["draw_mean"]["confident_share"] == pytest.approx(result["confident_share"])
    assert compare((features, probs), reference, draws=4) == result  # no randomness
    # the interval of every statistic contains its own estimate (what the percentile bootstrap got wrong)
    for key in ("frechet_distance", "confident_share"):
        mean, se = result["draw_mean"][key], result["draw_se"][key]
        assert mean - 2 * se <= mean <= mean + 2 * se and se >= 0
    single = compare((features, probs), reference, draws=1)
    assert "draw_mean" not in single and single["frechet_distance"] == result["frechet_distance"]
    assert "-" in format_table({"one draw": single})


def test_compare_rejects_draws_that_leave_fewer_than_two_images():
    features, probs = _fake_features_and_probs(9)
    reference = np.random.default_rng(9).normal(size=(60, 8))
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match="draws must be an integer from 1 to n // 2 = 4"):
            compare((features, probs), reference, draws=bad)


def test_draw_difference_is_the_difference_of_means_with_the_combined_standard_error():
    reference = np.random.default_rng(9).normal(size=(60, 8))
    a = compare(_fake_features_and_probs(40, seed=1), reference, draws=4)
    b = compare(_fake_features_and_probs(40, seed=2, shift=1.0), reference, draws=4)
    difference, se = draw_difference(a, b)
    assert difference == pytest.approx(
        a["draw_mean"]["frechet_distance"] - b["draw_mean"]["frechet_distance"]
    )
    assert se == pytest.approx(np.hypot(a["draw_se"]["frechet_distance"], b["draw_se"]["frechet_distance"]))
    assert difference < -2 * se  # the shifted features are resolved as farther from the reference
    with pytest.raises(ValueError, match="same draws"):
        draw_difference(a, compare(_fake_features_and_probs(40, seed=2), reference, draws=2))
    with pytest.raises(ValueError, match="no draws"):
        draw_difference(a, compare(_fake_features_and_probs(40, seed=2), reference, draws=1))


def test_baseline_images_reject_bad_n():
    with pytest.raises(ValueError, match="n must be between 2 and 4500"):
        baseline_images(1)


# --- sampling for evaluation, snapshots --------------------------------------------------------------------


def test_snapshots_along_the_shipped_run_load_and_end_with_the_shipped_model():
    paths = snapshot_paths()
    steps = [step for step, _ in paths]
    assert steps == sorted(steps) and len(steps) >= 3
    assert steps[-1] == provenance()["steps"]
    first, _, _ = load_denoiser(paths[0][1])
    last, _, _ = load_denoiser(paths[-1][1])
    x, t = torch.zeros(2, 1, 28, 28), torch.tensor([10, 900])
    with torch.no_grad():
        assert not torch.allclose(first(x, t), last(x, t))


# --- command line -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_a_saved_tensor(tmp_path, capsys):
    samples = load_mnist("train", verbose=False).tensors[0][:40]
    torch.save(samples, tmp_path / "s.pt")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--samples", str(tmp_path / "s.pt"), "--draws", "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "real digits (floor)" in printed and "bar (>= 90% of samples confident" in printed
    assert "per draw (4 x 10 samples)" in printed
    report = json.loads(out.read_text())
    assert report["n"] == 40 and set(report["results"]) == {
        "samples",
        "real digits (floor)",
        "blurred digits",
        "uniform noise",
    }
    assert report["results"]["samples"]["confident_share"] > 0.9
    assert len(report["results"]["samples"]["draw_values"]["frechet_distance"]) == 4


@pytest.mark.slow
def test_evaluate_samples_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--n", "2", "--draws", "1", "--no-progress", "--json", str(out)]) == 0
    assert "sample_clip()" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"]["sample_clip()"]["n"] == 2


def test_evaluate_rejects_a_tensor_in_0_255(tmp_path, capsys):
    torch.save(torch.rand(5, 1, 28, 28) * 255, tmp_path / "bad.pt")
    assert main(["evaluate", "--samples", str(tmp_path / "bad.pt")]) == 2
    assert "must lie in [-1, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_train_classifier_writes_weights_and_provenance(tmp_path, capsys):
    out = tmp_path / "c.pt"
    assert main(["train-classifier", "--epochs", "1", "--out", str(out)]) == 0
    loaded, record = load_classifier(out)
    assert isinstance(loaded, MnistClassifier)
    assert record["epochs"] == 1 and 0.5 < record["heldout_accuracy"] <= 1
    assert "held-out accuracy" in capsys.readouterr().out
