"""benchmarks/denoisers.py: its wall-clock learning-rate schedule is OneCycleLR's, a tiny run writes the record
chapter 11 reads, and the shipped record has every row with the command behind it; the shipped record of
benchmarks/ddp_scaling.py, which chapter 14 prints, has every CPU configuration and its command;
benchmarks/compile_speed.py times the quick presets' network and refuses a count below one; benchmarks/gpu_check.py's
dry run on the CPU records what it promises."""

import json
import sys
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compile_speed  # noqa: E402
import denoisers  # noqa: E402
import time_to_digits  # noqa: E402

from ddpm_lib.config import PRESETS  # noqa: E402


def test_the_wall_clock_schedule_is_one_cycle():
    optimizer = torch.optim.AdamW(torch.nn.Linear(1, 1).parameters(), 2e-3)
    theirs = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=2001, pct_start=0.1)
    for step in range(2000):
        expected = optimizer.param_groups[0]["lr"]
        assert denoisers.one_cycle_lr(step / 2000, 2e-3, 0.1) == pytest.approx(expected, rel=0.01, abs=2e-5)
        optimizer.step()
        theirs.step()


@pytest.mark.slow
def test_a_tiny_run_records_what_chapter_11_reads(tmp_path, capsys):
    record = tmp_path / "denoisers.json"
    assert denoisers.main(["--rows", "default,v", "--budget", "1", "--n", "8", "--record", str(record)]) == 0
    data = json.loads(record.read_text())
    assert [row["row"] for row in data["rows"]] == ["default", "v"]
    for row in data["rows"]:
        assert row["steps"] >= 1 and row["train_s"] >= 1 and 0 <= row["confident_share"] <= 1
        assert row["command"].startswith(f"python benchmarks/denoisers.py --rows {row['row']} --budget 1 ")
    assert "commands:" in capsys.readouterr().out.lower()
    with pytest.raises(SystemExit):
        denoisers.main(["--rows", "resnet"])


def test_the_shipped_record_has_every_row_and_its_command():
    data = json.loads((files("ddpm_lib") / "results" / "denoisers.json").read_text())
    assert [row["row"] for row in data["rows"]] == list(denoisers.ROWS)
    assert data["command"].startswith("python benchmarks/denoisers.py")
    for row in data["rows"]:
        assert row["train_s"] == pytest.approx(data["budget_s"], rel=0.05)  # the same CPU time for every row


def test_the_shipped_ddp_scaling_record_has_every_cpu_configuration_and_its_command():
    """Chapter 14 prints ddpm_lib/results/ddp_scaling.json: benchmarks/ddp_scaling.py --record made it."""
    data = json.loads((files("ddpm_lib") / "results" / "ddp_scaling.json").read_text())
    assert data["command"].startswith("python benchmarks/ddp_scaling.py") and "--record" in data["command"]
    assert (data["base_dim"], data["global_batch"]) == (32, 128)  # the course default, as the chapter says
    names = [row["name"] for row in data["rows"] if row["device"] == "cpu"]
    assert names == [
        "1 process, no launcher",
        "1 process, no launcher, 1 thread",
        "1 process, torchrun (gloo)",
        "2 processes, torchrun (gloo)",
    ]
    assert data["rows"][0]["ratio"] == 1.0
    for row in data["rows"]:
        assert len(row["rounds"]) == data["rounds"] and row["images_per_s"] > 0
        assert f"OMP_NUM_THREADS={row['threads']} python -m " in row["command"]


@pytest.mark.parametrize("name", list(denoisers.EXTRA_ROWS))
def test_each_extra_row_builds_a_v_network_with_attention(name):
    """The larger variants --rows offers beside the default run: each a v-predicting course U-Net with attention."""
    _, build, _ = denoisers.EXTRA_ROWS[name]
    model = build().eval()
    assert model.config["prediction"] == "v" and 2 in model.config["attention"]
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 1, 28, 28)


def test_compile_speed_times_the_quick_network_and_refuses_bad_counts(capsys):
    model = compile_speed.Side(compiled=False, batch_size=2, seed=0).model
    assert model.config["prediction"] == "v" and model.config["attention"] == [2]
    assert model.config["num_classes"] is None  # the unconditional quick recipe's network
    for option in ("--steps", "--rounds", "--batch-size"):
        with pytest.raises(SystemExit):
            compile_speed.main([option, "0"])
        assert f"{option} must be at least 1, got 0" in capsys.readouterr().err


def test_time_to_digits_takes_training_options_and_refuses_bad_ones(capsys):
    """--train: options of the training configuration, resolved and checked by the library (no argument list)."""
    options = {"schedule": "cosine", "grid": {"sampler": "clip"}, "lr": 3e-3, "model": {"attention": []}}
    recipe = time_to_digits.quick_config("quick", options)
    assert (recipe.schedule, recipe.grid.sampler, recipe.lr, recipe.model["attention"]) == (
        "cosine",
        "clip",
        3e-3,
        [],
    )
    assert recipe.steps == time_to_digits.quick_config("quick").steps  # the rest is the preset's
    assert recipe.eval_every == 0  # one grid at the end: the budget is for training
    for bad, words in [
        ('{"learning_rate": 1}', "--train: unknown option(s) learning_rate"),
        ('{"lr": "abc"}', "lr must be a positive number"),
        ('{"grid": {"sampler": "ddpm"}}', "clipped x0"),  # the recipe's own check: cosine grids need clipping
        ("--lr 1", "--train: not a JSON object"),
        ("[1]", "--train: expected a JSON object"),
    ]:
        with pytest.raises(SystemExit):
            time_to_digits.main(["--skip-reference", "--preset", "quick-unconditional", "--train", bad])
        assert words in capsys.readouterr().err, bad


def test_time_to_digits_autoguides_with_the_snapshot_at_a_quarter_of_the_run(tmp_path, capsys):
    recipe = time_to_digits.quick_config("quick-unconditional", autoguided=True)
    assert recipe.eval_every == recipe.steps // 4
    assert (recipe.schedule, recipe.grid.sampler, recipe.steps) == ("cosine", "clip", 2500)  # the preset's
    tiny = replace(recipe, steps=8, batch_size=4, eval_every=2, n_samples=2,
                   model={**recipe.model, "base_dim": 8, "dim_mults": [2], "attention": []})  # fmt: skip
    row = time_to_digits.train_and_sample(
        "tiny", tiny, tmp_path, 3, seed=1, guidance=0.0, autoguidance=1.0, interval=(200, 900)
    )
    assert row["samples"].shape == (3, 1, 28, 28) and (tmp_path / "tiny/checkpoints/step_000002.pt").is_file()
    with pytest.raises(SystemExit):
        time_to_digits.main(["--skip-reference", "--autoguidance", "-1"])
    assert "--autoguidance must be >= 0" in capsys.readouterr().err


def test_time_to_digits_samples_each_preset_its_own_way(capsys):
    assert set(time_to_digits.RECIPES) == set(PRESETS)
    # the unconditional recipe is autoguided on an interval; the class-conditional one is guided by its labels
    assert time_to_digits.RECIPES["quick"] == {"autoguidance": 0.0, "interval": None}
    assert time_to_digits.RECIPES["quick-unconditional"]["autoguidance"] > 0
    assert time_to_digits.interval_type("200:900") == (200, 900)
    assert time_to_digits.interval_type("all") == "all"
    for bad in ("900:200", "200", "a:b", "-1:5"):
        with pytest.raises(SystemExit):
            time_to_digits.main(["--skip-reference", f"--guidance-interval={bad}"])
        assert "--guidance-interval: expected LO:HI" in capsys.readouterr().err


@pytest.mark.slow  # a 4-step training run and a 40-digit evaluation in subprocesses: ~25 s
def test_gpu_check_runs_the_readme_command_and_records_time_and_scores(tmp_path, monkeypatch):
    """The GPU check's dry run on the CPU: what it runs on a GPU machine works, and its report has what it promises."""
    import gpu_check

    monkeypatch.setenv("DDPM_PRECISION", "float32")
    assert (
        gpu_check.main(
            ["--device", "cpu", "--steps", "4", "--n", "40", "--no-chapter", "--out", str(tmp_path)]
        )
        == 0
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device"].startswith("cpu, float32") and report["train_s"] > 0 and report["evaluate_s"] > 0
    assert report["train_command"].startswith("-m ddpm_lib train --preset quick")
    assert "bar_met" in report["scores"] and report["scores"]["results"]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):  # no such device here: argparse's one-line error, nothing run
            gpu_check.main(["--device", "cuda", "--out", str(tmp_path / "none")])
        assert not (tmp_path / "none").exists()
