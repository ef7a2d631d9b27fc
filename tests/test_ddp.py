"""Data-parallel training on CPU: torchrun with 2 gloo processes against one process, rank-0-only files,
a killed 2-process run resumed, and the pieces of ddpm_lib.distributed in-process.

The torchrun runs are real subprocesses (``python -m torch.distributed.run --standalone``, which picks a
free port), on a tiny U-Net for 16 steps, so the whole file takes well under a minute on 2 cores.
"""

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm_lib import checkpoint
from ddpm_lib.cli import main
from ddpm_lib.config import TrainConfig, scaled_lr
from ddpm_lib.distributed import Distributed, shard
from ddpm_lib.precision import choose, resolve_device
from ddpm_lib.runner import plan_run
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.training import ddpm_loss
from ddpm_lib.unet import Unet

STEPS = 16
RUN = ["--steps", str(STEPS), "--batch-size", "16", "--base-dim", "8", "--dim-mults", "2", "--seed", "3",
       "--n-samples", "1", "--eval-every", "0", "--checkpoint-every", "2", "--device", "cpu"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # the test process itself is no rank of a job
    ENV.pop(name, None)
HAS_WANDB = importlib.util.find_spec("wandb") is not None


def torchrun_command(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "ddpm_lib", "train", *args]  # fmt: skip


def torchrun(*args, nproc=2):
    return subprocess.run(torchrun_command(*args, nproc=nproc), capture_output=True, text=True, env=ENV,
                          timeout=300)  # fmt: skip


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 16 steps, global batch 16: two gloo processes (8 digits each, with the progress bar and,
    if installed, wandb) under torchrun, and meanwhile one process without a launcher."""
    root = tmp_path_factory.mktemp("ddp")
    pair = subprocess.Popen(
        torchrun_command(*RUN, "--out", str(root / "pair"), *(["--wandb"] if HAS_WANDB else [])),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        assert main(["train", *RUN, "--no-progress", "--out", str(root / "single")]) == 0
        stdout, stderr = pair.communicate(timeout=300)
    finally:
        pair.kill()
    assert pair.returncode == 0, stderr[-3000:]
    return root / "single", (root / "pair", subprocess.CompletedProcess(pair.args, 0, stdout, stderr))


@pytest.fixture(scope="module")
def single(runs):
    return runs[0]


@pytest.fixture(scope="module")
def pair(runs):
    return runs[1]


def inert_parameters(model_config):
    """Parameters with an identically zero gradient (a conv bias before a one-channel GroupNorm group).

    Adam divides their gradient — pure rounding noise — by its own size, so they random-walk by ±lr in
    any two runs that round differently, and change nothing the model computes.
    """
    model = Unet(**model_config).double()
    x, t = torch.randn(4, 1, 28, 28, dtype=torch.float64), torch.tensor([0, 10, 500, 999])
    model(x, t).square().mean().backward()
    return {name for name, p in model.named_parameters() if p.grad.abs().max() < 1e-12}


@pytest.mark.slow
def test_two_processes_reach_the_weights_of_one(single, pair):
    a = checkpoint.load(single / "checkpoints" / "last.pt")
    b = checkpoint.load(pair[0] / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == STEPS
    inert = inert_parameters(a["config"]["model"])
    assert all(name.endswith(".bias") for name in inert)
    for part in ("model", "ema"):
        wa, wb = (a[part], b[part]) if part == "model" else (a[part]["model"], b[part]["model"])
        assert wa.keys() == wb.keys()
        for name in wa.keys() - inert:
            assert torch.allclose(wa[name], wb[name], rtol=0, atol=1e-5), (part, name)
    # ... and the models compute the same function
    x, t = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(0, 1000, 125)
    outputs = []
    for state in (a, b):
        model = Unet(**state["config"]["model"])
        model.load_state_dict(state["ema"]["model"])
        with torch.no_grad():
            outputs.append(model.eval()(x, t))
    assert torch.allclose(*outputs, rtol=0, atol=1e-4)
    losses = [[r["loss"] for r in records(out)] for out in (single, pair[0])]
    assert torch.allclose(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5)
    assert [r["lr"] for r in records(single)] == pytest.approx([r["lr"] for r in records(pair[0])])


@pytest.mark.slow
def test_config_states_the_world_size_batch_split_and_learning_rate(single, pair):
    config, record = (json.loads((pair[0] / name).read_text()) for name in ("config.json", "run.json"))
    assert (record["world_size"], config["batch_size"], record["per_process_batch_size"]) == (2, 16, 8)
    assert record["backend"] == "gloo"
    assert config["lr_scaling"] == "none" and record["effective_lr"] == config["lr"] == 1e-3
    record = json.loads((single / "run.json").read_text())
    assert (record["world_size"], record["per_process_batch_size"], record["backend"]) == (1, 16, None)


@pytest.mark.slow
def test_only_rank_0_writes_logs_and_files(pair):
    out, result = pair
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    files = {f for f in files if not f.startswith("wandb/")}
    assert files == {"config.json", "run.json", "metrics.jsonl", "loss_curve.png", "checkpoints/last.pt",
                     f"checkpoints/step_{STEPS:06d}.pt", f"samples/step_{STEPS:06d}.png"}  # fmt: skip
    assert [r["step"] for r in records(out)] == list(range(1, STEPS + 1))  # one line per step, not two
    if HAS_WANDB:
        assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    assert result.stdout.count("MNIST train:") == 1  # the data loader's one line
    assert result.stdout.count(f"trained {STEPS} steps on 2 processes") == 1
    assert result.stderr.count(f" 0/{STEPS} [") == 1  # one progress bar


def descendants(pid):
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_killed_two_process_run_resumes_to_the_same_weights(pair, tmp_path, capsys):
    out = tmp_path / "killed"
    process = subprocess.Popen(torchrun_command(*RUN, "--no-progress", "--out", str(out)), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while not (out / "checkpoints" / "last.pt").exists() and process.poll() is None:
        time.sleep(0.005)
    for pid in [*descendants(process.pid), process.pid]:  # the whole job at once, like a lost node
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=60)
    killed_at = checkpoint.load(out / "checkpoints" / "last.pt")["step"]
    if killed_at == STEPS:
        pytest.skip("the run finished before it was killed")

    # another world size is refused, with one line that says why
    assert main(["train", "--out", str(out), "--resume"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "trained by 2 process(es)" in error[0] and "this launch has 1" in error[0]

    resumed = torchrun("--out", str(out), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = checkpoint.load(out / "checkpoints" / "last.pt")
    b = checkpoint.load(pair[0] / "checkpoints" / "last.pt")
    assert a["step"] == STEPS
    for name, value in b["model"].items():
        assert torch.allclose(a["model"][name], value, rtol=0, atol=1e-6), name
    for name, value in b["ema"]["model"].items():
        assert torch.allclose(a["ema"]["model"][name], value, rtol=0, atol=1e-6), name
    assert [r["step"] for r in records(out)] == list(range(1, STEPS + 1))


# ---- in-process: the pieces -------------------------------------------------------------------------


def test_shard_losses_and_gradients_add_up_to_the_full_batch():
    torch.manual_seed(0)
    model = Unet(base_dim=8, dim_mults=[2]).double()
    scheduler = LinearBetaScheduler()
    x0 = torch.rand(12, 1, 28, 28, dtype=torch.float64) * 2 - 1

    def loss_and_grads(loss_fn):
        model.zero_grad()
        loss = loss_fn(torch.Generator().manual_seed(7))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    full_loss, full_grads = loss_and_grads(lambda g: ddpm_loss(model, scheduler, x0, g))
    for world_size in (2, 3, 4):
        shards = [loss_and_grads(lambda g, r=r, n=world_size: ddpm_loss(model, scheduler, x0, g, part=shard(12, r, n)))
                  for r in range(world_size)]  # fmt: skip
        mean_loss = sum(loss for loss, _ in shards) / world_size
        assert torch.allclose(mean_loss, full_loss, rtol=1e-6)  # the loss is float32
        for i, full in enumerate(full_grads):  # what DDP's all-reduce averages
            assert torch.allclose(
                sum(grads[i] for _, grads in shards) / world_size, full, rtol=1e-5, atol=1e-9
            )


def test_shard_splits_the_global_batch_and_refuses_an_uneven_split():
    assert [shard(12, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(ValueError, match="--batch-size 10 .* multiple of the 4 processes"):
        shard(10, 0, 4)


def test_distributed_reads_the_launcher_variables():
    assert Distributed.from_env({}) == Distributed()
    dist = Distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (dist.rank, dist.world_size, dist.local_rank, dist.launched, dist.is_main) == (
        3,
        4,
        1,
        True,
        False,
    )
    assert resolve_device("cpu", local_rank=dist.local_rank) == torch.device(
        "cpu"
    )  # --device cpu: each rank's CPU
    assert Distributed.backend_for(torch.device("cpu")) == "gloo"
    assert Distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    for bad, message in [({"RANK": "0"}, "start data-parallel runs with torchrun"),
                         ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "must be integers"),
                         ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "out of range")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            Distributed.from_env(bad)


def test_learning_rate_scaling_and_the_resolved_config():
    assert scaled_lr(1e-3, 128, "none") == 1e-3
    assert scaled_lr(1e-3, 512, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 512, "sqrt") == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="lr_scaling must be one of"):
        scaled_lr(1e-3, 128, "cubic")
    dist = Distributed(rank=1, local_rank=1, world_size=4, launched=True)
    record = plan_run(TrainConfig(batch_size=256, lr_scaling="linear"), dist, choose("cpu", "float32"), 4500)
    assert (record.world_size, record.per_process_batch_size, record.backend) == (4, 64, "gloo")
    assert record.effective_lr == pytest.approx(2e-3) and record.steps == TrainConfig().steps
    with pytest.raises(ValueError, match="--batch-size 250"):
        plan_run(TrainConfig(batch_size=250), dist, choose("cpu", "float32"), 4500)


def test_an_uneven_batch_under_torchrun_fails_before_the_rendezvous(tmp_path, monkeypatch, capsys):
    for name, value in {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)  # what torchrun would set; no process group is ever joined
    assert main(["train", *RUN, "--out", str(tmp_path / "uneven")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("[rank 1] ") and "--batch-size 16" in error[0]
    assert not (tmp_path / "uneven").exists()


def test_the_command_line_offers_lr_scaling_and_checks_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--lr-scaling", "cubic"])
    assert exit_info.value.code == 2 and "--lr-scaling" in capsys.readouterr().err


def test_the_slurm_example_passes_options_the_command_line_accepts():
    from ddpm_lib.cli import build_parser

    script = (Path(__file__).resolve().parents[1] / "examples" / "slurm" / "train_ddp.sbatch").read_text()
    assert "#SBATCH --nodes" in script and "srun torchrun" in script
    command = script.split("-m ddpm_lib train", 1)[1].replace("\\\n", " ").split("\n", 1)[0]
    words = shlex.split(command.replace('"$OUT"', "runs/x").replace("$RESUME", ""))
    args = build_parser(["train", *words])[0].parse_args(["train", *words])
    assert (args.batch_size, args.lr_scaling, args.precision) == (1024, "sqrt", "auto")
