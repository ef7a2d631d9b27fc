"""ddpm_lib.fast_sampling against diffusers' DDIMScheduler, DDPMScheduler and DPMSolverMultistepScheduler."""

import pytest
import torch
from stand_ins import StandIn

from ddpm_lib.fast_sampling import (
    ddim_sample,
    ddim_step,
    dpm_solver_pp_sample,
    dpm_solver_pp_update,
    timesteps_for,
)
from ddpm_lib.sampling import predict_x0, reverse_step, sample_loop
from ddpm_lib.schedule import LinearBetaScheduler

diffusers = pytest.importorskip("diffusers")

T = 1000


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler(T, 1e-4, 0.02)


def their_ddim(spacing, clip):
    return diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=clip,
        set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon", timestep_spacing=spacing,
    )  # fmt: skip


def their_dpm(clip):
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=2,
        algorithm_type="dpmsolver++", prediction_type="epsilon", thresholding=clip, sample_max_value=1.0,
    )  # fmt: skip


def x_like(seed, shape=(3, 1, 6, 6), scale=1.0):
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- timesteps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_match_diffusers_ddim_for_every_n(spacing):
    theirs = their_ddim(spacing, False)
    for n in range(1, T + 1):
        ours = timesteps_for(T, n, spacing)
        theirs.set_timesteps(n)
        assert ours.dtype == torch.int64 and len(ours) == n
        if spacing == "trailing" and len(theirs.timesteps) == n + 1:
            # diffusers' np.arange(T, 0, -T/n) overshoots for some n and appends the invalid timestep -1
            assert theirs.timesteps[-1] == -1 and torch.equal(ours, theirs.timesteps[:n]), n
        else:
            assert torch.equal(ours, theirs.timesteps), (spacing, n)


def test_trailing_starts_at_the_last_timestep_and_leading_never_does():
    for n in (2, 3, 10, 50, 999):
        assert timesteps_for(T, n, "trailing")[0] == T - 1
        assert timesteps_for(T, n, "linspace")[0] == T - 1
        assert timesteps_for(T, n, "leading")[0] <= T - T / n
    assert timesteps_for(T, 10, "leading").tolist() == list(range(900, -1, -100))
    assert timesteps_for(T, 10, "trailing").tolist() == list(range(999, 0, -100))
    for spacing in ("leading", "trailing", "linspace"):
        assert timesteps_for(T, T, spacing).tolist() == list(range(T - 1, -1, -1))


def test_trailing_matches_diffusers_dpm_solver_spacing():
    """DPMSolverMultistepScheduler's trailing rule is DDIM's; its linspace / leading drop t = 0, so the
    tests below hand it explicit timesteps."""
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(
        their_dpm(False).config, timestep_spacing="trailing"
    )
    for n in (5, 10, 20, 50, 64):
        theirs.set_timesteps(n)
        assert timesteps_for(T, n, "trailing").tolist() == theirs.timesteps.tolist()


# ---------------------------------------------------------------- DDIM


@pytest.mark.parametrize("eta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
@pytest.mark.parametrize("spacing, n", [("leading", 10), ("trailing", 20), ("linspace", 7), ("trailing", 30)])
def test_ddim_step_matches_diffusers(scheduler, eta, clip, spacing, n):
    """Step by step at diffusers' own timesteps and its own previous timestep t - T // n."""
    model = StandIn()
    theirs = their_ddim(spacing, clip)
    theirs.set_timesteps(n)
    for i, t in enumerate(theirs.timesteps.tolist()):
        x_t = x_like(i, scale=1.5)
        eps = model(x_t, torch.full((3,), t))
        expected = theirs.step(eps, t, x_t, eta=eta, generator=torch.Generator().manual_seed(9)).prev_sample
        t_prev = max(t - T // n, -1)
        got = ddim_step(scheduler, t, t_prev, model, x_t, eta, clip, torch.Generator().manual_seed(9))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            ddim_step(scheduler, t, t_prev, eps, x_t, eta, clip, torch.Generator().manual_seed(9)), got
        )


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
@pytest.mark.parametrize("spacing, n", [("trailing", 10), ("trailing", 50), ("leading", 20)])
def test_ddim_full_loop_matches_diffusers(scheduler, eta, clip, spacing, n):
    """Full loops where diffusers' previous timestep t - T // n is the next entry of the list."""
    model = StandIn()
    theirs = their_ddim(spacing, clip)
    theirs.set_timesteps(n)
    assert theirs.timesteps.tolist() == timesteps_for(T, n, spacing).tolist()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, 1, 8, 8), generator=generator)
    with torch.no_grad():
        for t in theirs.timesteps.tolist():
            x = theirs.step(model(x, torch.full((2,), t)), t, x, eta=eta, generator=generator).prev_sample
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn((2, 1, 8, 8), generator=generator)
    ours = ddim_sample(
        model, scheduler, x_T, timesteps_for(T, n, spacing), clip=clip, eta=eta, generator=generator
    )
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_ddim_eta_one_over_all_steps_is_chapter_05s_sample(scheduler):
    model = StandIn()
    generator = torch.Generator().manual_seed(1)
    reference = sample_loop(
        model, scheduler, torch.randn((2, 1, 5, 5), generator=generator), clip=False, generator=generator
    )
    generator = torch.Generator().manual_seed(1)
    ours = ddim_sample(
        model, scheduler, torch.randn((2, 1, 5, 5), generator=generator), eta=1.0, generator=generator
    )
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_ddim_eta_zero_is_deterministic_and_draws_no_noise(scheduler):
    model = StandIn()
    x_T = x_like(2)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    ten = timesteps_for(T, 10)
    a = ddim_sample(model, scheduler, x_T, ten, eta=0.0, generator=generator)
    assert torch.equal(generator.get_state(), state)
    assert torch.equal(a, ddim_sample(model, scheduler, x_T, ten))
    assert not torch.equal(ddim_sample(model, scheduler, x_T, ten, eta=1.0, generator=generator), a)


def test_last_jump_to_the_clean_end_returns_x0_hat_and_draws_nothing(scheduler):
    model = StandIn()
    x_t = x_like(4, scale=2.0)
    eps = model(x_t, torch.full((3,), 19))
    generator = torch.Generator().manual_seed(2)
    state = generator.get_state()
    for clip in (False, True):
        x0 = predict_x0(scheduler, 19, eps, x_t, clip)
        torch.testing.assert_close(ddim_step(scheduler, 19, -1, model, x_t, 1.0, clip, generator), x0)
        torch.testing.assert_close(reverse_step(scheduler, 19, -1, model, x_t, clip, generator), x0)
        torch.testing.assert_close(dpm_solver_pp_update(scheduler, 19, -1, x_t, x0, (39, x0 + 1)), x0)
    assert torch.equal(generator.get_state(), state)


def test_a_ddpm_jump_equals_ddim_eta_one_without_clipping(scheduler):
    model = StandIn()
    x_t = x_like(5)
    a = reverse_step(scheduler, 700, 350, model, x_t, generator=torch.Generator().manual_seed(1))
    b = ddim_step(scheduler, 700, 350, model, x_t, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- DPM-Solver++(2M)


@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
@pytest.mark.parametrize("spacing, n", [("trailing", 20), ("trailing", 10), ("linspace", 15), ("leading", 7),
                                        ("trailing", 3), ("trailing", 2), ("trailing", 1)])  # fmt: skip
def test_dpm_solver_matches_diffusers_step_by_step(scheduler, clip, spacing, n):
    model = StandIn()
    timesteps = timesteps_for(T, n, spacing).tolist()
    theirs = their_dpm(clip)
    theirs.set_timesteps(timesteps=timesteps)
    assert theirs.timesteps.tolist() == timesteps and theirs.sigmas[-1] == 0
    x_T = x_like(7, (2, 1, 8, 8))
    their_states, x = [], x_T.clone()
    with torch.no_grad():
        for t in timesteps:
            their_states.append(x)
            x = theirs.step(model(x, torch.full((2,), t)), t, x).prev_sample
    our_states = []
    ours = dpm_solver_pp_sample(
        model, scheduler, x_T, timesteps, clip=clip, on_step=lambda t, x: our_states.append(x)
    )
    for i, (a, b) in enumerate(zip(our_states, their_states, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, i=i: f"step {i}: {m}")
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_dpm_solver_with_diffusers_own_trailing_timesteps(scheduler):
    model = StandIn()
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(
        their_dpm(False).config, timestep_spacing="trailing"
    )
    theirs.set_timesteps(25)
    x = x_like(8, (2, 1, 8, 8))
    ours = dpm_solver_pp_sample(model, scheduler, x, timesteps_for(T, 25))
    with torch.no_grad():
        for t in theirs.timesteps.tolist():
            x = theirs.step(model(x, torch.full((2,), t)), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_first_order_dpm_solver_is_ddim(scheduler):
    model = StandIn()
    x_t = x_like(9)
    for t, s in ((999, 949), (500, 100), (30, 0)):
        eps = model(x_t, torch.full((3,), t))
        x0 = predict_x0(scheduler, t, eps, x_t)
        torch.testing.assert_close(
            dpm_solver_pp_update(scheduler, t, s, x_t, x0), ddim_step(scheduler, t, s, eps, x_t)
        )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda s, m: timesteps_for(T, 10, "middle"),
            "spacing must be one of 'leading', 'trailing', 'linspace'",
        ),
        (lambda s, m: timesteps_for(T, 0), r"num_steps must lie in 1\.\.1000"),
        (lambda s, m: timesteps_for(T, 1001), r"num_steps must lie in 1\.\.1000"),
        (lambda s, m: timesteps_for(T, 10.0), "num_steps must be an integer"),
        (lambda s, m: timesteps_for(0, 1), "num_train_timesteps"),
        (lambda s, m: ddim_step(s, 500, 400, m, x_like(0), eta=1.5), r"eta must be a number in \[0, 1\]"),
        (lambda s, m: ddim_step(s, 500, 400, m, x_like(0), eta=-0.1), "eta"),
        (lambda s, m: ddim_step(s, 500, 500, m, x_like(0)), r"t_prev must lie in -1\.\.499"),
        (lambda s, m: ddim_step(s, 1000, 10, m, x_like(0)), r"t must lie in 0\.\.999"),
        (lambda s, m: ddim_step(s, 0, 0, m, x_like(0)), r"t_prev must lie in -1\.\.-1"),
        (lambda s, m: ddim_step(s, 5, 1, torch.zeros(2, 1, 6, 6), x_like(0)), "noise prediction must have"),
        (lambda s, m: ddim_step(s, 5, 1, m, [1.0, 2.0]), "x_t must be a floating-point tensor"),
        (lambda s, m: ddim_sample(m, s, torch.zeros(2, 1, 4, 4, dtype=torch.long)), "x_T must be"),
        (lambda s, m: dpm_solver_pp_sample(m, s, x_like(0), 0), "timesteps must be a descending sequence"),
        (lambda s, m: ddim_sample(m, s, x_like(0), [5, 7]), "strictly descending"),
        (lambda s, m: sample_loop(m, s, x_like(0), [T, 3]), r"every timestep must lie in 0\.\.999"),
        (
            lambda s, m: dpm_solver_pp_update(s, 500, 400, x_like(0), x_like(1), (300, x_like(1))),
            "previous t",
        ),
    ],
)
def test_bad_input_names_the_argument(scheduler, call, match):
    with pytest.raises(ValueError, match=match):
        call(scheduler, StandIn())


# ---------------------------------------------------------------- command line


def test_cli_sample_with_fast_samplers(tmp_path, capsys):
    from ddpm_lib.cli import main

    for sampler, extra in (("ddim", ["--eta", "0.5"]), ("dpmpp", []), ("clip", [])):
        out, tensors = tmp_path / f"{sampler}.png", tmp_path / f"{sampler}.pt"
        argv = ["sample", "--sampler", sampler, "--steps", "5", "--n", "4", "--out", str(out), "--tensors"]
        assert main([*argv, str(tensors), "--no-progress", "--device", "cpu", *extra]) == 0, sampler
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        images = torch.load(tensors, weights_only=True)
        assert images.shape == (4, 1, 28, 28) and images.abs().max() <= 1
        assert "5 steps" in capsys.readouterr().out


def test_cli_evaluate_with_a_fast_sampler(tmp_path, capsys):
    from ddpm_lib.cli import main

    report = tmp_path / "eval.json"
    argv = [
        "evaluate",
        "--sampler",
        "dpmpp",
        "--steps",
        "4",
        "--n",
        "6",
        "--draws",
        "1",
        "--json",
        str(report),
    ]
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "DPM-Solver++(2M), 4 steps" in out and "dpmpp, 4 steps (trailing), seed 0" in out
    import json

    saved = json.loads(report.read_text())
    assert saved["sampler"] == "dpmpp" and saved["steps"] == 4 and saved["n"] == 6
