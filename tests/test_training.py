"""ddpm_lib.training: the objective, one step, OneCycleLR, EMA, the loop's determinism."""

import math
from itertools import islice

import pytest
import torch
from torch import nn

from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.training import (
    EMA,
    NonFiniteLossError,
    batch_stream,
    ddpm_loss,
    make_lr_scheduler,
    make_optimizer,
    train,
    train_step,
)


class TinyDenoiser(nn.Module):
    """Two convolutions and a learned per-timestep bias: enough to learn something in a few steps."""

    def __init__(self, timesteps=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 1, 3, padding=1)
        self.time = nn.Embedding(timesteps, 8)

    def forward(self, x, t):
        return self.conv2(torch.relu(self.conv1(x) + self.time(t)[:, :, None, None]))


@pytest.fixture
def scheduler():
    return LinearBetaScheduler()


@pytest.fixture
def images():
    return torch.rand((64, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_loss_of_a_zero_predictor_is_about_one(scheduler, images):
    loss = ddpm_loss(
        lambda x, t: torch.zeros_like(x),
        scheduler,
        images.repeat(8, 1, 1, 1),
        torch.Generator().manual_seed(0),
    )
    assert loss.item() == pytest.approx(1.0, abs=0.03)


def test_loss_is_reproducible_with_a_generator(scheduler, images):
    model = TinyDenoiser()
    a = ddpm_loss(model, scheduler, images, torch.Generator().manual_seed(1))
    b = ddpm_loss(model, scheduler, images, torch.Generator().manual_seed(1))
    assert a.item() == b.item()


def test_one_step_lowers_the_loss_on_a_fixed_batch(scheduler, images):
    torch.manual_seed(0)
    model = TinyDenoiser()
    optimizer = make_optimizer(model, lr=1e-2)

    def fixed_loss():
        with torch.no_grad():
            return ddpm_loss(model, scheduler, images, torch.Generator().manual_seed(9)).item()

    before = fixed_loss()
    stats = train_step(model, optimizer, None, scheduler, images, torch.Generator().manual_seed(9))
    assert fixed_loss() < before
    assert set(stats) == {"loss", "grad_norm", "lr"} and stats["lr"] == 1e-2


def test_one_cycle_schedule_values():
    probe = nn.Parameter(torch.zeros(1))
    optimizer = make_optimizer(nn.ParameterList([probe]), lr=1e-3)
    lr_scheduler = make_lr_scheduler(optimizer, max_lr=1e-3, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr_scheduler.step()
    assert lrs[0] == pytest.approx(1e-3 / 25)  # OneCycleLR's default div_factor
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 24  # 25% warm-up
    # cosine anneal from the peak to max_lr / (25 * 1e4)
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1e4, rel=1e-6)
    middle = 24 + (99 - 24) // 2
    assert lrs[middle] == pytest.approx((1e-3 + 4e-9) / 2, rel=0.05)


def test_ema_update_formula():
    live = nn.Linear(2, 1)
    ema = EMA(live, decay=0.9, warmup=False)
    start = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
    ema.update(live)
    for average, before, now in zip(ema.model.parameters(), start, live.parameters(), strict=True):
        torch.testing.assert_close(average, 0.9 * before + 0.1 * now)


def test_ema_warmup_and_state_round_trip():
    ema = EMA(nn.Linear(1, 1), decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    for _ in range(5):
        ema.update(nn.Linear(1, 1))
    assert ema.current_decay() == pytest.approx(6 / 15)
    other = EMA(nn.Linear(1, 1), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 5 and other.decay == 0.999
    assert all(
        torch.equal(a, b) for a, b in zip(other.model.parameters(), ema.model.parameters(), strict=True)
    )
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), decay=1.0)


def test_batch_stream_is_fixed_by_the_seed_and_resumable(images):
    full = [batch for _, batch in islice(batch_stream(images, 16, seed=3), 20)]
    resumed = list(islice(batch_stream(images, 16, seed=3, start_step=7), 13))
    assert [step for step, _ in resumed] == list(range(7, 20))
    resumed = [batch for _, batch in resumed]
    assert all(torch.equal(a, b) for a, b in zip(full[7:], resumed, strict=True))
    first_epoch = torch.cat(full[:4])
    assert sorted(first_epoch.flatten().tolist()) == sorted(images.flatten().tolist())  # a permutation
    other = next(batch_stream(images, 16, seed=4))[1]
    assert not torch.equal(full[0], other)
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_stream(images, 65, seed=0))


def run_loop(scheduler, images, steps, start=None, stop_after=None):
    torch.manual_seed(0)
    model = TinyDenoiser()
    optimizer = make_optimizer(model)
    lr_scheduler = make_lr_scheduler(optimizer, 1e-3, 12)
    ema = EMA(model)
    generator = torch.Generator().manual_seed(0)
    if start is not None:
        for module, state in zip((model, optimizer, lr_scheduler, ema), start["states"], strict=True):
            module.load_state_dict(state)
        generator.set_state(start["generator"])
    calls = []
    done = train(
        model, optimizer, lr_scheduler, scheduler, images, steps=steps, batch_size=16, seed=0,
        generator=generator, ema=ema, start_step=0 if start is None else start["step"],
        on_step=lambda step, stats: calls.append(step),
        should_stop=(lambda: len(calls) >= stop_after) if stop_after else None,
    )  # fmt: skip
    states = [m.state_dict() for m in (model, optimizer, lr_scheduler, ema)]
    return done, calls, {"states": states, "generator": generator.get_state(), "step": done}, model, ema


def test_loop_stopped_and_resumed_reaches_the_same_weights(scheduler, images):
    done, calls, _, model, ema = run_loop(scheduler, images, 12)
    assert done == 12 and calls == list(range(1, 13))
    stopped, _, state, _, _ = run_loop(scheduler, images, 12, stop_after=5)
    assert stopped == 5
    resumed, calls, _, model2, ema2 = run_loop(scheduler, images, 12, start=state)
    assert resumed == 12 and calls == list(range(6, 13))
    for a, b in zip(list(model.parameters()) + list(ema.model.parameters()),
                    list(model2.parameters()) + list(ema2.model.parameters()), strict=True):  # fmt: skip
        assert torch.equal(a, b)


def test_non_finite_loss_names_the_step_and_keeps_the_weights(scheduler, images):
    model = TinyDenoiser()
    optimizer = make_optimizer(model)
    before = [p.detach().clone() for p in model.parameters()]

    class Explode(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, t):
            return self.inner(x, t) * math.inf

    with pytest.raises(NonFiniteLossError, match="at step 1"):
        train(Explode(), optimizer, None, scheduler, images, steps=3, batch_size=16, seed=0,
              generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("total_steps, pct_start", [(4, 0.25), (10, 0.1), (2, 0.5), (20, 0.05)])
def test_one_cycle_survives_a_warm_up_of_exactly_one_step(total_steps, pct_start):
    """OneCycleLR divides by zero when pct_start * total_steps == 1 (e.g. --steps 10 with the quick preset)."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    lr_scheduler = make_lr_scheduler(optimizer, 1e-3, total_steps, pct_start)
    for _ in range(total_steps - 1):
        optimizer.step()
        lr_scheduler.step()
    assert 0 < optimizer.param_groups[0]["lr"] <= 1e-3
