"""ddpm_lib.synthetic (chapter 16): the small classifier and its training, real subsets, standard errors,
labelled generated sets."""

import math

import pytest
import torch

from ddpm_lib.generation import SampleSpec, generate
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.synthetic import (
    SmallClassifier,
    generated_set,
    mean_and_error,
    real_subset,
    train_small_classifier,
)
from ddpm_lib.unet import Unet


def digits(n=40, seed=0):
    """Images in [-1, 1] with the shape of MNIST digits, and labels 0..9 in turn."""
    images = torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return images, torch.arange(n) % 10


@pytest.fixture(scope="module")
def conditional():
    torch.manual_seed(0)
    return Unet(timesteps=50, base_dim=8, dim_mults=[2], num_classes=10).eval()


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler(50)


# ---------------------------------------------------------------- the classifier


def test_the_small_classifier_maps_digits_to_ten_logits_with_20490_parameters():
    classifier = SmallClassifier()
    assert classifier(digits(3)[0]).shape == (3, 10)
    assert sum(p.numel() for p in classifier.parameters()) == 20_490
    assert SmallClassifier(num_classes=4)(digits(2)[0]).shape == (2, 4)


def test_a_seed_fixes_the_classifier_and_leaves_the_global_random_state_alone():
    images, labels = digits()
    state = torch.get_rng_state()
    first = train_small_classifier(images, labels, steps=3, batch_size=8, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    second = train_small_classifier(images, labels, steps=3, batch_size=8, seed=1)
    other = train_small_classifier(images, labels, steps=3, batch_size=8, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))
    assert not torch.equal(first.head.weight, other.head.weight)
    assert not first.training  # returned in eval mode


def test_training_fits_a_small_set():
    images, labels = digits(20)
    classifier = train_small_classifier(images, labels, steps=150, batch_size=20, lr=5e-3)
    with torch.no_grad():
        assert (classifier(images).argmax(1) == labels).float().mean() >= 0.9


@pytest.mark.parametrize(
    "change, match",
    [
        ({"images": torch.zeros(4, 28, 28)}, "images"),
        ({"images": torch.zeros(4, 1, 28, 28, dtype=torch.long)}, "images"),
        ({"labels": torch.zeros(5, dtype=torch.long)}, "labels"),
        ({"labels": torch.zeros(4)}, "labels"),
        ({"labels": torch.tensor([0, 1, 2, 10])}, "labels"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": True}, "lr"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_training_arguments_are_refused_by_name(change, match):
    arguments = {"images": torch.zeros(4, 1, 28, 28), "labels": torch.arange(4), "steps": 1, **change}
    with pytest.raises(ValueError, match=match):
        train_small_classifier(**arguments)


# ---------------------------------------------------------------- real subsets and standard errors


def test_a_real_subset_has_per_class_digits_of_every_class_drawn_by_the_seed():
    images, labels = digits(100)
    chosen, chosen_labels = real_subset(images, labels, 3, seed=0)
    assert chosen.shape == (30, 1, 28, 28)
    assert torch.equal(chosen_labels, torch.arange(10).repeat_interleave(3))
    rows = {tuple(image.flatten()[:4].tolist()) for image in chosen}
    assert len(rows) == 30  # without replacement
    for image, label in zip(chosen, chosen_labels, strict=True):  # each image keeps its own label
        assert labels[(images == image).flatten(1).all(1)].item() == label
    assert torch.equal(real_subset(images, labels, 3, seed=0)[0], chosen)
    assert not torch.equal(real_subset(images, labels, 3, seed=1)[0], chosen)


def test_a_real_subset_refuses_more_than_a_class_holds():
    images, labels = digits(30)  # 3 per class
    with pytest.raises(ValueError, match="per_class"):
        real_subset(images, labels, 4)
    with pytest.raises(ValueError, match="per_class"):
        real_subset(images, labels, 0)


def test_mean_and_standard_error():
    mean, error = mean_and_error([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and math.isclose(error, math.sqrt(5 / 3) / 2)
    assert mean_and_error(torch.tensor([0.5, 0.5])) == (0.5, 0.0)
    for bad in ([1.0], [], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="values"):
            mean_and_error(bad)


# ---------------------------------------------------------------- generated sets


def test_a_generated_set_holds_per_class_digits_of_every_class_with_the_labels_asked_for(
    conditional, scheduler
):
    spec = SampleSpec(sampler="ddim", steps=2, seed=3, precision="float32")
    images, labels = generated_set(conditional, scheduler, 2, spec)
    assert images.shape == (20, 1, 28, 28) and images.abs().max() <= 1
    assert torch.equal(labels, torch.arange(20) % 10)
    assert torch.equal(images, generate(conditional, scheduler, 20, spec, labels=labels))
    guided, _ = generated_set(conditional, scheduler, 2, spec, guidance=1.0)
    assert torch.equal(guided, generate(conditional, scheduler, 20, spec, guidance=1.0, labels=labels))


def test_a_generated_set_needs_a_conditional_model_every_class_and_a_spec(conditional, scheduler):
    unconditional = Unet(timesteps=50, base_dim=8, dim_mults=[2]).eval()
    with pytest.raises(ValueError, match="class-conditional"):
        generated_set(unconditional, scheduler, 1, steps=1)
    with pytest.raises(ValueError, match="label"):
        generated_set(conditional, scheduler, 1, SampleSpec(label=3, steps=1))
    with pytest.raises(ValueError, match="per_class"):
        generated_set(conditional, scheduler, 0, steps=1)
    with pytest.raises(ValueError, match="spec"):
        generated_set(conditional, scheduler, 1, {"steps": 1})
