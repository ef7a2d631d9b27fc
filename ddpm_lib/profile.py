"""Run profiles: one switch between a learner's full-size runs and CI's small, fast ones.

The environment variable ``DDPM_PROFILE`` is read here and nowhere else. Chapters never test it;
they read sizes from :data:`PROFILE`::

    from ddpm_lib.profile import PROFILE
    n = PROFILE.monte_carlo_samples

``DDPM_PROFILE=full`` (the default) is what a learner runs; ``DDPM_PROFILE=ci`` is what the test
suite, CI and the book build use. ``DDPM_FIGURES_DIR``, when set, is where chapters save the figures
that the README and the book show (``python tools/make_figures.py`` sets it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "DDPM_PROFILE"
FIGURES_ENV_VAR = "DDPM_FIGURES_DIR"


@dataclass(frozen=True)
class Profile:
    """Sizes a chapter may scale with the profile. Add a field when a chapter needs one."""

    name: str
    #: draws used by Monte-Carlo checks of the forward process (chapters 01-02)
    monte_carlo_samples: int
    #: digits pushed through the 1000-step forward chain when checking the closed form
    forward_chain_samples: int
    #: chapter 03 (the theory on a 2-D toy): optimisation steps of the toy's MLP; toy points per scatter plot,
    #: sample and Monte-Carlo average; toy points behind each value of the variational bound; held-out digits,
    #: t-samples per digit and timesteps on the per-term curve of the live MNIST bound
    theory_train_steps: int = 4000
    theory_points: int = 4000
    theory_bound_points: int = 500
    theory_mnist_digits: int = 20
    theory_mnist_t_samples: int = 20
    theory_term_timesteps: int = 40
    #: optimisation steps and batch size of the live training run of chapter 05
    train_steps: int = 600
    train_batch_size: int = 128
    #: steps between the sample grids chapter 05 draws during its live run
    train_grid_every: int = 200
    #: chapter 05, section 8: steps of each of the three short runs (ε, v, x_0), and the digits that measure
    #: their loss per noise level
    prediction_steps: int = 800
    prediction_loss_digits: int = 256
    #: digits per sample grid drawn from a model (1000 network calls each step of the way)
    grid_samples: int = 16
    #: chapter 11: the quick recipe's live run (steps, batch), steps between its evaluations, digits
    #: sampled per evaluation and the network calls of each (a respaced DDPM chain)
    quick_steps: int = 1400
    quick_batch_size: int = 64
    quick_eval_every: int = 350
    quick_eval_samples: int = 128
    quick_sampler_steps: int = 25
    #: chapter 04: training steps and batch size of the BatchNorm-vs-GroupNorm measurement
    norm_study_steps: int = 150
    norm_study_batch_size: int = 64
    #: chapter 04: timed forward + backward passes per model when comparing the units' speed
    unit_timing_steps: int = 5
    #: chapter 07: epochs of the live classifier training (the shipped classifier used 15)
    classifier_epochs: int = 15
    #: chapter 07: samples per row of the evaluation tables (every sample takes 1000 network calls)
    eval_samples: int = 256
    #: chapter 07: samples per checkpoint of the quality-vs-training-steps curve, and how many of the
    #: latest checkpoints to score (None: all)
    eval_snapshot_samples: int = 64
    eval_snapshots: int | None = None
    #: disjoint draws each evaluation table splits its samples into, for the standard errors (chapter 07)
    eval_draws: int = 4
    #: chapter 08: samples per point of the quality-vs-network-evaluations plot, and its NFE budgets
    nfe_samples: int = 256
    nfe_steps: tuple[int, ...] = (10, 20, 50, 100, 250, 1000)
    #: chapter 09: held-out digits behind the loss-per-noise-level table, samples per row of its metric table
    schedule_loss_digits: int = 500
    schedule_eval_samples: int = 256
    #: chapter 10: columns per digit of the guidance grids, samples per row of the guidance table, its scales w,
    #: and the steps of the respaced DDPM chain behind both
    guidance_grid_columns: int = 6
    guidance_eval_samples: int = 256
    guidance_scales: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    guidance_steps: int = 100
    #: chapter 12: held-out digits per class inpainted under every mask, and the respaced chain of
    #: its measurement (steps, RePaint's resamplings per step)
    inpaint_digits_per_class: int = 5
    inpaint_steps: int = 50
    inpaint_resample: int = 4
    #: chapter 13: digits per sampled chain (1000 network calls each) when reproducing the sampler bugs
    bugs_samples: int = 8
    #: chapter 14: steps of the one-process and two-process runs it compares (on a tiny U-Net)
    scaling_steps: int = 40
    #: chapter 15: held-out images behind the noise-survival and loss-per-t tables, timesteps of the survival
    #: curve, samples per class and row of the sample grid, the respaced DDPM chain and guidance scale of the
    #: samples, samples per row of the evaluation table
    fashion_noise_images: int = 500
    fashion_noise_timesteps: int = 10
    fashion_grid_per_class: int = 6
    fashion_sampler_steps: int = 100
    fashion_guidance: float = 2.0
    fashion_eval_samples: int = 300
    #: chapter 16: generated digits per class in each pool (and real digits per class behind the classification
    #: accuracy score's real baseline), steps of the respaced DDPM chain that draws them, the guidance scales w
    #: compared, real digits per class of the small training sets, seeds per table row, and the optimisation
    #: steps of every small classifier
    synthetic_per_class: int = 100
    synthetic_steps: int = 50
    synthetic_scales: tuple[float, ...] = (0.0, 1.0, 3.0)
    synthetic_real_per_class: tuple[int, ...] = (10, 50)
    synthetic_seeds: int = 5
    synthetic_train_steps: int = 500
    #: where chapters save figures for the README / book; None: don't save
    figures_dir: Path | None = None
    #: progress bars (tqdm.auto) on the cells that run for more than about 30 s in the full profile; off in
    #: the CI profile, whose outputs the tests and the book keep (no widget output to store or render)
    progress: bool = True


PROFILES = {
    "full": Profile(name="full", monte_carlo_samples=200_000, forward_chain_samples=2_000),
    "ci": Profile(
        name="ci",
        progress=False,
        monte_carlo_samples=20_000,
        forward_chain_samples=200,
        theory_train_steps=1500,
        theory_points=1000,
        theory_bound_points=100,
        theory_mnist_digits=2,
        theory_mnist_t_samples=2,
        theory_term_timesteps=8,
        train_steps=12,
        train_batch_size=32,
        train_grid_every=12,  # one grid, at the end: each costs 1000 network calls
        prediction_steps=30,
        prediction_loss_digits=32,
        grid_samples=4,
        quick_steps=6,
        quick_batch_size=16,
        quick_eval_every=3,
        quick_eval_samples=10,
        quick_sampler_steps=10,
        norm_study_steps=40,
        norm_study_batch_size=32,
        unit_timing_steps=3,
        scaling_steps=8,
        bugs_samples=2,
        classifier_epochs=1,
        eval_samples=8,
        eval_snapshot_samples=4,
        eval_snapshots=1,
        eval_draws=2,
        nfe_samples=4,
        nfe_steps=(10, 20, 50),
        schedule_loss_digits=100,
        schedule_eval_samples=8,
        guidance_grid_columns=2,
        guidance_eval_samples=20,  # two digits per class: the diversity needs pairs
        guidance_scales=(0.0, 2.0),
        guidance_steps=25,
        inpaint_digits_per_class=1,
        inpaint_steps=20,
        inpaint_resample=2,
        fashion_noise_images=100,
        fashion_noise_timesteps=4,
        fashion_grid_per_class=1,
        fashion_sampler_steps=10,
        fashion_eval_samples=20,
        synthetic_per_class=4,
        synthetic_steps=10,
        synthetic_scales=(0.0, 3.0),
        synthetic_seeds=2,
        synthetic_train_steps=100,
    ),
}


def get_profile(name: str | None = None, figures_dir: str | None = None) -> Profile:
    """The profile called ``name`` (default: from ``$DDPM_PROFILE``, else ``full``)."""
    if name is None:
        name = os.environ.get(ENV_VAR, "full").strip().lower() or "full"
    if name not in PROFILES:
        raise ValueError(f"{ENV_VAR}={name!r} is not a profile; allowed: {', '.join(PROFILES)}")
    if figures_dir is None:
        figures_dir = os.environ.get(FIGURES_ENV_VAR) or None
    profile = PROFILES[name]
    if figures_dir:
        profile = Profile(**{**profile.__dict__, "figures_dir": Path(figures_dir)})
    return profile


PROFILE = get_profile()
