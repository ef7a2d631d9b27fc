"""python -m ddpm_lib train / sample: the run folder, resume, Ctrl-C, NaN, wandb, and bad options."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddpm_lib import checkpoint
from ddpm_lib.cli import main

# A tiny U-Net and grids of one digit keep each run to seconds on a CPU.
TINY = ["--batch-size", "16", "--base-dim", "8", "--dim-mults", "2", "--n-samples", "1", "--no-progress"]


def cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "ddpm_lib", *args], capture_output=True, text=True, timeout=600, **kwargs
    )


def weights(path):
    state = checkpoint.load(path, "run")
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"ema.{k}": v for k, v in state["ema"]["model"].items()}}  # fmt: skip


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """12 uninterrupted steps; the reference for the resume tests."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    result = cli(
        "train", "--steps", "12", "--eval-every", "6", "--checkpoint-every", "3", "--out", str(out), *TINY
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_run_folder_has_every_file(straight_run):
    names = {p.relative_to(straight_run).as_posix() for p in straight_run.rglob("*") if p.is_file()}
    assert {"config.json", "metrics.jsonl", "loss_curve.png", "checkpoints/last.pt"} <= names
    assert {"samples/step_000006.png", "samples/step_000012.png"} <= names
    assert {"checkpoints/step_000006.pt", "checkpoints/step_000012.pt"} <= names
    records = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"step", "loss", "lr", "images_per_s", "grad_norm"} <= set(records[0])
    config = json.loads((straight_run / "config.json").read_text())
    assert config["steps"] == 12 and config["model"]["base_dim"] == 8 and config["ema_decay"] == 0.999
    state = checkpoint.load(straight_run / "checkpoints" / "last.pt")
    assert state["step"] == 12
    assert {"model", "ema", "optimizer", "lr_scheduler", "rng", "config"} <= set(state)


def interrupt_after_first_checkpoint(out, sig):
    command = [sys.executable, "-m", "ddpm_lib", "train", "--steps", "12", "--eval-every", "6",
               "--checkpoint-every", "3", "--out", str(out), *TINY]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (out / "checkpoints" / "last.pt").exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_and_resumed_run_matches_the_uninterrupted_one(straight_run, tmp_path, sig):
    out = tmp_path / "interrupted"
    code, stdout, _ = interrupt_after_first_checkpoint(out, sig)
    if code == 0:
        pytest.skip("the run finished before the signal arrived")
    if sig == signal.SIGINT:
        assert code == 130 and "--resume" in stdout
        # Ctrl-C saved a checkpoint at the step it stopped, and metrics agree with it
        stopped_at = checkpoint.load(out / "checkpoints" / "last.pt")["step"]
        assert len((out / "metrics.jsonl").read_text().splitlines()) == stopped_at
    # resuming with the run's own command line (as a SLURM script re-submits it) is allowed
    again = ["--steps", "12", "--eval-every", "6", "--checkpoint-every", "3", *TINY]
    resumed = cli(
        "train", "--out", str(out), "--resume", *(again if sig == signal.SIGINT else ["--no-progress"])
    )
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(out / "checkpoints" / "last.pt", straight_run / "checkpoints" / "last.pt")
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import ddpm_lib.training as training

    real_loss, calls = training.ddpm_loss, {"n": 0}

    def loss_that_explodes(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(training, "ddpm_loss", loss_that_explodes)
    out = tmp_path / "nan"
    code = main(
        ["train", "--steps", "10", "--eval-every", "0", "--checkpoint-every", "1", "--out", str(out), *TINY]
    )
    assert code == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "loss is nan at step 4" in message
    assert checkpoint.load(out / "checkpoints" / "last.pt")["step"] == 3


@pytest.mark.slow
def test_wandb_offline_logs_locally(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    result = cli("train", "--steps", "2", "--eval-every", "0", "--out", str(out), "--wandb", "--wandb-mode",
                 "offline", "--wandb-run-name", "test", *TINY, env={**__import__("os").environ, "WANDB_SILENT": "true"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert list((out / "wandb").glob("offline-run-*")), "no offline wandb run was written"
    assert (out / "metrics.jsonl").exists()


@pytest.mark.slow
def test_without_wandb_installed_nothing_breaks(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    out = tmp_path / "nowb"
    assert main(["train", "--steps", "1", "--eval-every", "0", "--out", str(out), *TINY]) == 0
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "wb"), "--wandb", *TINY]) == 2
    assert "pip install wandb" in capsys.readouterr().err


def test_help_and_the_reference_mode_spelling(capsys):
    def help_of(*argv):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        assert exit_.value.code == 0
        return capsys.readouterr().out

    text = help_of("train")
    for option in ("--steps", "--epochs", "--batch-size", "--lr", "--ema-decay", "--data-root", "--out",
                   "--seed", "--device", "--resume", "--wandb", "--preset", "--sampler", "--base-dim"):  # fmt: skip
        assert option in text
    assert "--checkpoint" in help_of("--mode", "eval")
    assert "--resume" in help_of("--mode=train")


@pytest.mark.slow
def test_console_script():
    ddpm = shutil.which("ddpm")
    if ddpm is None:
        pytest.skip("ddpm_lib is not installed with its console script")
    result = subprocess.run([ddpm, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.slow
def test_sample_from_a_training_checkpoint(straight_run, tmp_path):
    out = tmp_path / "grid.png"
    result = cli("sample", "--checkpoint", str(straight_run / "checkpoints" / "last.pt"), "--n", "4", "--out",
                 str(out), "--tensors", str(tmp_path / "s.pt"), "--gif", str(tmp_path / "t.gif"), "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = torch.load(tmp_path / "s.pt", weights_only=True)
    assert samples.shape == (4, 1, 28, 28) and samples.min() >= -1 and samples.max() <= 1
    assert out.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "t.gif").read_bytes()[:3] == b"GIF"


def _capture_configs(monkeypatch):
    from ddpm_lib import runner

    seen = []

    def fake_run_training(config, out, progress=True, init_from=None):
        seen.append(config)
        return {"stopped_by": None, "world_size": 1, "rank": 0, "step": config.steps or 0}

    monkeypatch.setattr(runner, "run_training", fake_run_training)
    return seen


def test_preset_sets_the_recipe_and_explicit_options_override_it(monkeypatch, tmp_path):
    """--preset quick replaces the defaults field by field; options spelled out on the command line win."""
    from ddpm_lib.config import PRESETS

    seen = _capture_configs(monkeypatch)
    main(["train", "--preset", "quick", "--out", str(tmp_path / "a"), "--no-progress"])
    main(["train", "--preset", "quick", "--out", str(tmp_path / "b"), "--steps", "7", "--lr", "1e-4",
          "--units-per-block", "1", "--sampler-steps", "50", "--no-progress"])  # fmt: skip
    quick, overridden = seen
    preset = PRESETS["quick"]
    for key, value in preset.items():
        if key not in ("model", "grid"):
            assert getattr(quick, key) == value, key
    assert {k: getattr(quick.grid, k) for k in preset["grid"]} == preset["grid"]
    assert {k: quick.model[k] for k in preset["model"]} == preset["model"] and quick.preset == "quick"
    assert (overridden.steps, overridden.lr, overridden.grid.steps) == (7, 1e-4, 50)
    assert overridden.model["units_per_block"] == 1
    assert overridden.model["mid_units"] == preset["model"]["mid_units"]  # not given: still the preset's
    assert overridden.batch_size == preset["batch_size"] and overridden.loss_weighting == "min_snr"
    assert overridden.grid.guidance == preset["grid"]["guidance"]


@pytest.mark.parametrize("name", ["quick", "quick-unconditional"])
def test_every_preset_is_a_valid_run_and_reaches_the_command_line(monkeypatch, tmp_path, name):
    from ddpm_lib.config import PRESETS, preset_defaults
    from ddpm_lib.unet import Unet

    config = preset_defaults(name).check()
    Unet(**config.model)  # builds
    seen = _capture_configs(monkeypatch)
    main(["train", "--preset", name, "--out", str(tmp_path / name), "--no-progress"])
    (parsed,) = seen
    assert parsed.steps == PRESETS[name]["steps"] and parsed.preset == name
    assert (parsed.model.get("num_classes") is None) == (name == "quick-unconditional")


def test_the_prediction_target_and_attention_are_train_options(monkeypatch, tmp_path, capsys):
    seen = _capture_configs(monkeypatch)
    main(["train", "--prediction", "v", "--attention", "1,2", "--out", str(tmp_path / "a"), "--no-progress"])
    main(["train", "--attention", "none", "--out", str(tmp_path / "b"), "--no-progress"])
    first, second = seen
    assert first.model["prediction"] == "v" and first.model["attention"] == [1, 2]
    assert second.model["attention"] == [] and second.model["prediction"] == "eps"
    for bad, message in (
        (["--prediction", "noise"], "invalid choice"),
        (["--attention", "3"], "--attention"),
    ):
        try:
            code = main(["train", *bad, "--out", str(tmp_path / "c"), "--no-progress"])
        except SystemExit as exit_info:
            code = exit_info.code
        assert code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_an_explicit_batch_size_wins_over_the_preset_and_abbreviations_are_refused(
    monkeypatch, tmp_path, capsys
):
    """ddpm_lib 0.1 took --batch 32 for --batch-size (argparse's abbreviations) and then let the preset
    overwrite it with 64, silently."""
    seen = _capture_configs(monkeypatch)
    assert main(["train", "--preset", "quick", "--batch-size", "32", "--out", str(tmp_path / "a")]) == 0
    assert seen[-1].batch_size == 32
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "quick", "--batch", "32", "--out", str(tmp_path / "b")])
    assert exit_.value.code == 2 and "unrecognized arguments: --batch 32" in capsys.readouterr().err
    assert len(seen) == 1


def test_epochs_count_batches_of_the_batch_size_actually_used(monkeypatch, tmp_path):
    """ddpm_lib 0.1 turned --preset quick --epochs N into steps with the default batch (128), not the preset's 64."""
    from ddpm_lib.distributed import Distributed
    from ddpm_lib.runner import plan_run

    seen = _capture_configs(monkeypatch)
    main(["train", "--preset", "quick", "--epochs", "2", "--out", str(tmp_path / "a")])
    main(["train", "--preset", "quick", "--epochs", "2", "--batch-size", "100", "--out", str(tmp_path / "b")])
    main(["train", "--epochs", "2", "--out", str(tmp_path / "c")])
    assert [(config.epochs, config.steps) for config in seen] == [(2, None)] * 3  # asked: epochs, not steps
    from ddpm_lib.precision import choose

    steps = [plan_run(config, Distributed(), choose("cpu"), 4500).steps for config in seen]
    assert steps == [2 * (4500 // 64), 2 * (4500 // 100), 2 * (4500 // 128)]


@pytest.mark.slow
def test_fashion_mnist_trains_samples_and_evaluates_through_the_same_commands(tmp_path, debian_fashion_mnist):
    """--dataset fashion-mnist: the run records it, sample and evaluate follow the checkpoint's data set,
    evaluate scores against Fashion-MNIST's held-out images with its own classifier and floor."""
    out = tmp_path / "fashion"
    result = cli("train", "--dataset", "fashion-mnist", "--steps", "4", "--eval-every", "0", "--num-classes",
                 "10", "--sampler", "ddim", "--sampler-steps", "3", "--out", str(out), *TINY)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Fashion-MNIST train: 4,500 images" in result.stdout
    assert json.loads((out / "config.json").read_text())["dataset"] == "fashion-mnist"
    last = out / "checkpoints" / "last.pt"
    sampled = cli("sample", "--checkpoint", str(last), "--dataset", "fashion-mnist", "--sampler", "ddim",
                  "--steps", "3", "--n", "4", "--out", str(tmp_path / "g.png"), "--no-progress")  # fmt: skip
    assert sampled.returncode == 0 and (tmp_path / "g.png").is_file(), sampled.stderr
    report_path = tmp_path / "e.json"
    evaluated = cli("evaluate", "--checkpoint", str(last), "--sampler", "ddim", "--steps", "3", "--n", "8",
                    "--draws", "2", "--json", str(report_path), "--no-progress")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "reference: 500 held-out images" in evaluated.stdout and "real images (floor)" in evaluated.stdout
    report = json.loads(report_path.read_text())
    assert report["dataset"] == "fashion-mnist" and report["classifier"]["dataset"] == "fashion-mnist"
    assert report["bar_met"] is None and "against" in evaluated.stdout  # the digit bar does not apply
    assert "real images (floor)" in report["results"] and "real digits (floor)" not in report["results"]
    wrong = cli("evaluate", "--checkpoint", str(last), "--dataset", "mnist", "--n", "8", "--no-progress")
    assert wrong.returncode == 2 and "learnt fashion-mnist" in wrong.stderr


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_trained_weights_and_counts_on(straight_run, tmp_path, capsys):
    from ddpm_lib import runner
    from ddpm_lib.config import config_from_dict, record_from_dict

    source_path = straight_run / "checkpoints" / "step_000006.pt"
    source = checkpoint.load(source_path, "run")
    run = runner.Run(config_from_dict(source["config"]), record_from_dict(source["record"]), tmp_path / "probe",
                     first_step=6)  # fmt: skip
    run.start_from(source, source_path)
    for name, value in source["ema"]["model"].items():  # both the live model and its average begin there
        assert torch.equal(run.model.state_dict()[name], value) and torch.equal(
            run.ema.model.state_dict()[name], value
        )
    assert run.step == 6 and run.ema.num_updates == source["ema"]["num_updates"]
    assert (
        run.lr_scheduler.total_steps == source["record"]["steps"] - 6
    )  # a fresh one-cycle over the added steps

    out = tmp_path / "continued"
    args = [
        "train",
        "--init-from",
        str(source_path),
        "--steps",
        "9",
        "--eval-every",
        "0",
        "--out",
        str(out),
        *TINY,
    ]
    assert main(args) == 0
    state = checkpoint.load(out / "checkpoints" / "last.pt", "run")
    assert state["step"] == 9
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [
        7,
        8,
        9,
    ]
    record = json.loads((out / "init.json").read_text())
    assert record["step"] == 6 and record["source"] == str(source_path) and len(record["sha256"]) == 64
    assert (out / "samples" / "step_000009.png").is_file()
    capsys.readouterr()

    # repeating the command line with --resume is fine; naming other weights is refused
    assert main([*args, "--resume"]) == 0
    assert main([*args[:2], str(straight_run / "checkpoints" / "last.pt"), *args[3:], "--resume"]) == 2
    assert "--init-from: " in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, flag, words",
    [
        (["--base-dim", "16"], "--init-from", "base_dim 16 (the weights have 8)"),
        (["--schedule", "cosine", "--sampler", "clip"], "--init-from", "schedule 'cosine'"),
        (["--steps", "6"], "--steps", "ask for more than 6, got 6"),
    ],
    ids=["network", "schedule", "no-steps-left"],
)
def test_init_from_refuses_another_network_schedule_or_no_steps_left(straight_run, tmp_path, capsys, change, flag,
                                                                     words):  # fmt: skip
    source = straight_run / "checkpoints" / "step_000006.pt"
    out = tmp_path / "refused"
    argv = ["train", "--init-from", str(source), "--steps", "9", "--out", str(out), *TINY, *change]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {flag}: " in err and words in err, err
    assert not out.exists()  # refused before anything is written


def test_init_from_names_what_it_accepts(tmp_path, capsys):
    assert (
        main(["train", "--init-from", "no_such_weights", "--steps", "9", "--out", str(tmp_path / "r"), *TINY])
        == 2
    )
    err = capsys.readouterr().err
    assert "--init-from: no shipped weights called 'no_such_weights'" in err
    assert "(a checkpoint file, shipped weights or NAME@STEP)" in err


@pytest.mark.slow
def test_ship_weights_keeps_the_chain_of_a_continued_run(straight_run, tmp_path, monkeypatch):
    """A run continued from one of the shipped snapshots keeps the snapshots up to its start and records the earlier
    run; its wall time adds to the earlier run's."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ship_weights", Path(__file__).parents[1] / "tools" / "ship_weights.py"
    )
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    monkeypatch.setattr(ship, "ROOT", tmp_path)
    weights_dir = tmp_path / "ddpm_lib" / "weights"
    (weights_dir / "tiny_steps").mkdir(parents=True)
    for name, step in (
        ("step_000006.pt", 3),
        ("step_000006.pt", 6),
        ("step_000012.pt", 12),
    ):  # 12: another chain
        shutil.copy(straight_run / "checkpoints" / name, weights_dir / "tiny_steps" / f"step_{step:06d}.pt")
    earlier = {"command": "python -m ddpm_lib train --steps 6", "steps": 6, "training_wall_time_s": 100.0,
               "machine": "a laptop", "torch": "2.x"}  # fmt: skip
    (weights_dir / "tiny.json").write_text(json.dumps(earlier))
    out = tmp_path / "continued"
    source = weights_dir / "tiny_steps" / "step_000006.pt"
    argv = [
        "train",
        "--init-from",
        str(source),
        "--steps",
        "10",
        "--eval-every",
        "2",
        "--out",
        str(out),
        *TINY,
    ]
    assert main(argv) == 0
    assert (
        ship.main([str(out), "--name", "tiny", "--command", "python -m ddpm_lib train --init-from ..."]) == 0
    )
    record = json.loads((weights_dir / "tiny.json").read_text())
    assert record["steps"] == 10 and record["snapshots"] == [3, 6, 8]  # step 12 was not part of this chain
    assert record["summary"].startswith("10 steps (6 + 4 continued)")
    this_run = record["initialised_from"]["this_run_wall_time_s"]
    assert record["initialised_from"]["earlier_run"] == earlier and record["initialised_from"]["step"] == 6
    assert record["training_wall_time_s"] == pytest.approx(100.0 + this_run, abs=0.11)
    assert checkpoint.load(weights_dir / "tiny.pt", "denoiser")["step"] == 10


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_computes_in_bfloat16_only_where_the_cpu_has_it(monkeypatch, tmp_path, capsys, native):
    """A CPU without bfloat16 instructions runs bfloat16 about ten times slower than float32: there a run asked for
    the automatic precision (the quick presets) trains in float32, says so and records it; sampling does the same."""
    import ddpm_lib.precision as precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    out = tmp_path / "run"
    command = ["train", "--precision", "auto", "--steps", "2", "--eval-every", "0", "--device", "cpu", "--out",
               str(out), *TINY]  # fmt: skip
    assert main(command) == 0
    said = capsys.readouterr().out
    expected = "bfloat16" if native else "float32"
    assert f"device and precision: cpu, {expected}: " in said
    assert ("no bfloat16 instructions" in said) is not native
    assert json.loads((out / "config.json").read_text())["precision"] == "auto"  # what was asked
    assert json.loads((out / "run.json").read_text())["precision"] == expected  # what the run computed in
    assert checkpoint.load(out / "checkpoints" / "last.pt", "run")["record"]["precision"] == expected
    assert (
        main([*command, "--resume"]) == 0
    )  # repeating the command line with --resume is accepted either way
    assert json.loads((out / "run.json").read_text())["precision"] == expected


def test_a_resumed_run_keeps_the_precision_it_started_with(monkeypatch, capsys, tmp_path):
    import ddpm_lib.precision as precision
    from ddpm_lib.config import TrainConfig
    from ddpm_lib.distributed import Distributed
    from ddpm_lib.runner import plan_run

    one = Distributed()
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    cpu = precision.choose("cpu", "auto")
    assert plan_run(TrainConfig(precision="auto"), one, cpu, 4500).precision == "float32"
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert (
        plan_run(TrainConfig(precision="auto"), one, precision.choose("cpu", "auto"), 4500).precision
        == "bfloat16"
    )
    out = tmp_path / "run"
    command = ["train", "--precision", "auto", "--steps", "2", "--eval-every", "0", "--device", "cpu", "--out",
               str(out), *TINY]  # fmt: skip
    assert main(command) == 0  # started where bfloat16 is native
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert main([*command, "--resume", "--steps", "3"]) == 2  # resuming with another length is refused...
    capsys.readouterr()
    assert main([*command, "--resume"]) == 0  # ...the same command resumes, in the precision it started in
    assert "cpu, bfloat16: asked for; this CPU has no bfloat16 instructions" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["precision"] == "bfloat16"
