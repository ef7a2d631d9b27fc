"""The theory chapter's checks bite: a deliberately wrong coefficient in a formula makes the chapter's check for it fail.

Each case below edits one formula of chapters/03_theory.py (a factor of 1.01, a dropped term, t for t − 1, ...), then
runs the chapter's cells from the edited one to the check that should catch it. The unedited chapter must pass every
check; each edited one must fail with an AssertionError in its check cell (not earlier, not with another error).

The chapter runs once, in the CI profile, in a subprocess (the profile is read when ddpm_lib.profile is imported);
each case restarts from a snapshot of the chapter's names taken before the edited cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "03_theory.py"

#: (name, the text to replace (once in the chapter), its wrong version, a text that marks the check cell)
CASES = [
    (
        "posterior mean: coefficient of x_0 times 1.01",
        "coef_x0 = alpha_bars_prev.sqrt() * betas / (1 - alpha_bars)",
        "coef_x0 = 1.01 * alpha_bars_prev.sqrt() * betas / (1 - alpha_bars)",
        "assert variance_error < 1e-8 and mean_error < 1e-8",
    ),
    (
        "posterior variance: alpha_bar_t for alpha_bar_(t-1) in the numerator",
        "variance = (1 - alpha_bars_prev) / (1 - alpha_bars) * betas",
        "variance = (1 - alpha_bars) / (1 - alpha_bars) * betas",
        "assert variance_error < 1e-8 and mean_error < 1e-8",
    ),
    (
        "Gaussian KL: the -1 dropped",
        "(var_1 + (mean_1 - mean_2) ** 2) / var_2 - 1.0)",
        "(var_1 + (mean_1 - mean_2) ** 2) / var_2)",
        "assert torch.allclose(ours, torch_kl, rtol=1e-12)",
    ),
    (
        "decoder: bins of 1/bins instead of 1/(bins - 1) on either side",
        "half_bin = 1.0 / (bins - 1)",
        "half_bin = 1.0 / bins",
        "assert worst_bin < 1e-12",
    ),
    (
        "decoder width: beta-tilde of the code's t = 2",
        "return math.sqrt(float((1 - alpha_bars[0]) / (1 - alpha_bars[1]) * (1 - alpha_bars[1] / alpha_bars[0])))",
        "return math.sqrt(float((1 - alpha_bars[1]) / (1 - alpha_bars[2]) * (1 - alpha_bars[2] / alpha_bars[1])))",
        "assert math.isclose(sigma_1**2, posterior_variance[1].item(), rel_tol=1e-12)",
    ),
    (
        "lambda_t: 1 - alpha_bar_t for 1 - alpha_bar_(t-1)",
        "weights = (1 - alphas) / (2 * alphas * (1 - alpha_bars_prev))",
        "weights = (1 - alphas) / (2 * alphas * (1 - alpha_bars))",
        "assert max(worst.values()) < 1e-8",
    ),
    (
        "min-SNR: gamma = 4.5 in the plotted weights",
        "min_snr_weights = snr64.clamp(max=5.0) / snr64",
        "min_snr_weights = snr64.clamp(max=4.5) / snr64",
        "assert abs(applied / min_snr_weights[drawn_t].mean().item() - 1) < 1e-4",
    ),
    (
        "bits per dimension: ln 2 dropped",
        "return self.mean() / (self.dims * math.log(2))",
        "return self.mean() / self.dims",
        "assert abs(floor_bits - floor_from_erf / math.log(2)) < 1e-9",
    ),
    (
        "Tweedie: the score term times 1.01",
        "tweedie = (x_t + (1 - alpha_bar) * mixture.noised(alpha_bar).score(x_t)) / math.sqrt(alpha_bar)",
        "tweedie = (x_t + 1.01 * (1 - alpha_bar) * mixture.noised(alpha_bar).score(x_t)) / math.sqrt(alpha_bar)",
        "assert worst_tweedie < 1e-9",
    ),
    (
        "exact reverse step: the likelihood's precision times 1.01",
        "precisions = prior_precisions + ratio / (1 - ratio) * torch.eye(mixture.dim, dtype=torch.float64)",
        "precisions = prior_precisions + 1.01 * ratio / (1 - ratio) * torch.eye(mixture.dim, dtype=torch.float64)",
        "assert max(row[3] for row in reverse_rows) < 1e-9",
    ),
    (
        "Langevin: the drift's 1/2 made 0.6",
        "x = x + 0.5 * step_size * score(x) + math.sqrt(step_size) * z",
        "x = x + 0.6 * step_size * score(x) + math.sqrt(step_size) * z",
        "assert abs(cloud.var().item() / v - 1) < 4 * math.sqrt(2 / len(cloud))",
    ),
    (
        "Metropolis correction: the reverse proposal's density left out",
        "log_ratio = log_prob(proposal) - log_prob(x) + log_proposal(x, proposal) - log_proposal(proposal, x)",
        "log_ratio = log_prob(proposal) - log_prob(x)",
        "assert (torch.cov(mala_points.T) - target_covariance).abs().max() < 0.008",
    ),
]

RUNNER = r"""
import json, sys
import jupytext
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

chapter, cases = sys.argv[1], json.loads(sys.argv[2])
cells = [cell.source for cell in jupytext.read(chapter).cells if cell.cell_type == "code"]
names, snapshots, results = {"__name__": "__main__"}, [], {}
for index, source in enumerate(cells):
    snapshots.append(dict(names))
    exec(compile(source, f"cell {index}", "exec"), names)
    plt.close("all")
for name, old, new, check in cases:
    start = [i for i, source in enumerate(cells) if old in source]
    if len(start) != 1 or cells[start[0]].count(old) != 1:
        results[name] = f"the text to replace occurs in {len(start)} cells, not once"
        continue
    start = start[0]
    stop = next((i for i in range(start, len(cells)) if check in cells[i]), None)
    if stop is None:
        results[name] = "no check cell at or after the edited cell"
        continue
    trial, outcome = dict(snapshots[start]), "every cell passed"
    for index in range(start, stop + 1):
        source = cells[index].replace(old, new) if index == start else cells[index]
        try:
            exec(compile(source, f"cell {index}", "exec"), trial)
        except AssertionError:
            outcome = "the check failed" if index == stop else f"an assertion failed in cell {index}, before the check"
            break
        except Exception as error:
            outcome = f"{type(error).__name__} in cell {index}: {error}"
            break
        finally:
            plt.close("all")
    results[name] = outcome
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, str]:
    figures = tmp_path_factory.mktemp("figures")
    env = {
        **os.environ,
        "DDPM_PROFILE": "ci",
        "DDPM_FIGURES_DIR": str(figures),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(CHAPTER), json.dumps(CASES)],
        cwd=CHAPTER.parent, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"the unedited chapter failed:\n{done.stderr[-4000:]}"
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_a_wrong_coefficient_fails_the_chapters_check(outcomes, case):
    assert outcomes[case[0]] == "the check failed"


def test_at_least_ten_formulas_are_covered():
    assert len({case[1] for case in CASES}) >= 10
