"""ddpm_lib.domains (chapter 15): image statistics, accuracy under noise, the confusion matrix."""

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_lib.domains import accuracy_under_noise, confusion_matrix, image_statistics
from ddpm_lib.schedule import LinearBetaScheduler


def test_image_statistics_of_known_images():
    black = -torch.ones(4, 1, 28, 28)
    stats = image_statistics(black)
    assert stats["background"] == 1.0 and stats["mean intensity"] == -1.0 and stats["edge energy"] == 0.0
    stripes = -torch.ones(2, 1, 28, 28)
    stripes[..., ::2] = 1.0  # columns alternate 1, -1: every horizontal difference is 2
    assert image_statistics(stripes)["edge energy"] == 2.0 and image_statistics(stripes)["background"] == 0.5
    noise = torch.rand((400, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    low = (torch.fft.fftfreq(28).abs() <= 0.25).sum().item()
    assert image_statistics(noise)["high-frequency share"] == pytest.approx(1 - (low / 28) ** 2, abs=0.01)
    with pytest.raises(ValueError, match="images"):
        image_statistics(torch.zeros(3, 28, 28))


def test_confusion_matrix_counts_rows_by_true_class():
    matrix = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), num_classes=3)
    assert matrix.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"classes must lie in 0\.\.9"):
        confusion_matrix(torch.tensor([10]), torch.tensor([0]))


class Oracle(nn.Module):
    """Reads the class off the image's mean: class k images are filled with the value k / 10 - 0.5."""

    def forward(self, x):
        level = ((x.mean((1, 2, 3)) + 0.5) * 10).round().clamp(0, 9).long()
        return nn.functional.one_hot(level, 10).float()


def test_accuracy_under_noise_falls_from_clean_to_chance():
    labels = torch.arange(10).repeat(20)
    images = (labels.float() / 10 - 0.5).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()
    scheduler = LinearBetaScheduler(1000)
    accuracies = accuracy_under_noise(Oracle(), images, labels, scheduler, [0, 999], seed=1)
    assert isinstance(accuracies, np.ndarray) and accuracies[0] == 1.0 and accuracies[1] < 0.5
    again = accuracy_under_noise(Oracle(), images, labels, scheduler, [0, 999], seed=1)
    assert np.array_equal(accuracies, again)  # seeded
    with pytest.raises(ValueError, match=r"timesteps must lie in 0\.\.999"):
        accuracy_under_noise(Oracle(), images, labels, scheduler, [1000])
    with pytest.raises(ValueError, match="labels must have shape"):
        accuracy_under_noise(Oracle(), images, labels[:3], scheduler, [0])
