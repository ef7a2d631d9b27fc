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
    #: where chapters save figures for the README / book; None: don't save
    figures_dir: Path | None = None


PROFILES = {
    "full": Profile(name="full", monte_carlo_samples=200_000, forward_chain_samples=2_000),
    "ci": Profile(name="ci", monte_carlo_samples=20_000, forward_chain_samples=200),
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
