"""ddpm_lib.inpainting (chapter 12): masks, the forward jump, the replacement method and RePaint, the CLI."""

import pytest
import torch
from stand_ins import CountCalls

from ddpm_lib.diffusion import q_sample, q_step
from ddpm_lib.fast_sampling import timesteps_for
from ddpm_lib.inpainting import MASK_KINDS, inpaint, make_mask, q_jump
from ddpm_lib.sampling import reverse_step, sample_loop
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.unet import Unet

T = 1000


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler(T)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Unet(timesteps=T, base_dim=8, dim_mults=[2]).eval()


def digits(n=3, seed=0):
    """Images in [-1, 1] with the shape of MNIST digits."""
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_masks_have_the_right_shape_and_values(kind):
    masks = make_mask(kind, 4, generator=seeded())
    assert masks.shape == (4, 1, 28, 28) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    share_missing = {
        "left": 0.5,
        "right": 0.5,
        "top": 0.5,
        "bottom": 0.5,
        "centre": 0.25,
        "random": 627 / 784,
    }
    assert torch.allclose(1 - masks.mean(dim=(1, 2, 3)), torch.tensor(share_missing[kind]))


def test_the_masks_miss_the_parts_they_are_named_after():
    left, right, top, bottom, centre = (make_mask(kind)[0, 0] for kind in MASK_KINDS[:5])
    assert left[:, :14].eq(0).all() and left[:, 14:].eq(1).all()
    assert torch.equal(left + right, torch.ones(28, 28)) and torch.equal(top + bottom, torch.ones(28, 28))
    assert top[:14].eq(0).all() and top[14:].eq(1).all()
    assert centre[7:21, 7:21].eq(0).all() and centre.sum() == 784 - 196
    assert (make_mask("centre", square=4)[0, 0] == 0).nonzero().tolist() == [
        [r, c] for r in range(12, 16) for c in range(12, 16)
    ]
    assert (make_mask("left", size=7) == 0).sum() == 7 * 3  # odd size: the first floor(size/2) columns


def test_random_masks_are_seeded_and_drawn_per_mask():
    a = make_mask("random", 3, generator=seeded(1))
    assert torch.equal(a, make_mask("random", 3, generator=seeded(1)))
    assert not torch.equal(a[0], a[1])
    assert ((1 - make_mask("random", 2, missing=0.25, generator=seeded(2))).sum(dim=(1, 2, 3)) == 196).all()
    assert make_mask("random", missing=0.0).eq(1).all() and make_mask("random", missing=1.0).eq(0).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "diagonal"}, "kind must be one of 'left'"),
        ({"kind": "left", "n": 0}, r"n must lie in 1\.\."),
        ({"kind": "left", "size": 1}, "size"),
        ({"kind": "left", "square": 4}, "square applies only to kind 'centre'"),
        ({"kind": "centre", "square": 29}, r"square must lie in 1\.\.28"),
        ({"kind": "centre", "missing": 0.5}, "missing applies only to kind 'random'"),
        ({"kind": "random", "missing": 1.5}, r"missing must be .* in \[0, 1\]"),
        ({"kind": "random", "generator": 3}, "generator must be a torch.Generator"),
    ],
)
def test_bad_mask_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_mask(**kwargs)


# ---------------------------------------------------------------- the forward jump


def test_q_jump_is_q_step_for_one_step_and_q_sample_from_the_clean_end(scheduler):
    x, noise = digits(), torch.randn((3, 1, 28, 28), generator=seeded(1))
    for t in (1, 500, 999):
        # q_jump reads alpha_bar in float64; q_step and q_sample (like diffusers' add_noise) use the float32 tables,
        # whose 1 - alpha_bar keeps ~4 digits near t = 0
        assert torch.allclose(
            q_jump(scheduler, x, t - 1, t, noise), q_step(scheduler, x, t, noise), atol=1e-4
        )
        assert torch.allclose(q_jump(scheduler, x, -1, t, noise), q_sample(scheduler, x, t, noise), atol=1e-5)


def test_two_jumps_have_the_distribution_of_one(scheduler):
    generator = seeded(2)
    x0 = torch.full((200_000, 1), -0.4)
    x_s = q_sample(scheduler, x0, 100, torch.randn(x0.shape, generator=generator))
    x_t = q_jump(scheduler, x_s, 100, 700, torch.randn(x0.shape, generator=generator))
    alpha_bar = scheduler.alpha_bars[700]
    assert abs(x_t.mean() - alpha_bar.sqrt() * -0.4) < 0.01
    assert abs(x_t.var() - (1 - alpha_bar)) < 0.01


@pytest.mark.parametrize(
    "s, t, noise_shape, match",
    [(5, 5, (3, 1, 28, 28), r"t must lie in 6\.\.999"), (-2, 5, (3, 1, 28, 28), "s must lie in -1"),
     (0, 1000, (3, 1, 28, 28), "t must lie"), (0, 5, (3, 1, 27, 28), "noise must be a tensor shaped like x_s")],
)  # fmt: skip
def test_q_jump_rejects_bad_levels_and_noise(scheduler, s, t, noise_shape, match):
    with pytest.raises(ValueError, match=match):
        q_jump(scheduler, digits(), s, t, torch.zeros(noise_shape))


# ---------------------------------------------------------------- inpaint


@pytest.mark.parametrize("resample", [0, 2])
@pytest.mark.parametrize("kind", ["left", "centre", "random"])
def test_known_pixels_are_exactly_the_original(model, scheduler, kind, resample):
    x0, mask = digits(), make_mask(kind, 3, generator=seeded(3))
    out = inpaint(model, scheduler, x0, mask, num_steps=4, resample=resample, generator=seeded())
    assert out.shape == x0.shape and out.abs().max() <= 1
    assert torch.equal(out * mask, x0 * mask)
    assert not torch.equal(out, x0)  # the missing pixels were filled with something else


def test_with_every_pixel_known_the_output_is_x0(model, scheduler):
    x0 = digits()
    assert torch.equal(inpaint(model, scheduler, x0, torch.ones(1, 1, 28, 28), 5, 2, seeded()), x0)


def test_with_nothing_known_it_is_unconditional_sampling_from_the_same_seed(model, scheduler):
    x0 = digits()
    for steps in (1, 7):
        out = inpaint(model, scheduler, x0, torch.zeros(1, 1, 28, 28), steps, 0, seeded(4))
        generator = seeded(4)
        x_T = torch.randn(x0.shape, generator=generator)
        assert torch.equal(
            out,
            sample_loop(
                model, scheduler, x_T, timesteps_for(T, steps), clip=False, generator=generator
            ).clamp(-1, 1),
        )
    # and the original plays no part at all, with resampling too
    a = inpaint(model, scheduler, digits(seed=1), torch.zeros(3, 1, 28, 28), 5, 2, seeded(5))
    b = inpaint(model, scheduler, digits(seed=2), torch.zeros(3, 1, 28, 28), 5, 2, seeded(5))
    assert torch.equal(a, b)


def test_a_seeded_generator_makes_it_deterministic(model, scheduler):
    x0, mask = digits(), make_mask("bottom")
    first = inpaint(model, scheduler, x0, mask, 6, 2, seeded(6))
    assert torch.equal(first, inpaint(model, scheduler, x0, mask, 6, 2, seeded(6)))
    assert not torch.equal(first, inpaint(model, scheduler, x0, mask, 6, 2, seeded(7)))


def test_a_broadcast_mask_equals_the_expanded_one(model, scheduler):
    x0, mask = digits(), make_mask("top")
    one = inpaint(model, scheduler, x0, mask, 4, 1, seeded(8))
    for same in (mask.expand(3, 1, 28, 28), mask[0, 0], mask.bool()):
        assert torch.equal(one, inpaint(model, scheduler, x0, same, 4, 1, seeded(8)))


@pytest.mark.parametrize("steps, resample", [(1, 0), (1, 3), (10, 0), (10, 3)])
def test_network_calls_are_steps_plus_resample_times_steps_minus_one(model, scheduler, steps, resample):
    counted = CountCalls(model)
    inpaint(counted, scheduler, digits(), make_mask("right"), steps, resample, seeded())
    assert counted.calls == steps + resample * (steps - 1)


def test_resample_repeats_each_step_after_jumping_back(scheduler):
    """With a stand-in whose step is known, one round of resampling is: step, jump back with q_jump, step."""
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731 - a stand-in callable, no weights
    x0, mask = digits(1), make_mask("left")
    out = inpaint(zero, scheduler, x0, mask, 2, 1, seeded(9))
    generator = seeded(9)
    t, s = timesteps_for(T, 2).tolist()

    def replacement_step(x):
        x_s = reverse_step(scheduler, t, s, zero, x, generator=generator)
        return (
            mask * q_sample(scheduler, x0, s, torch.randn(x0.shape, generator=generator)) + (1 - mask) * x_s
        )

    x_s = replacement_step(torch.randn(x0.shape, generator=generator))
    x_s = replacement_step(q_jump(scheduler, x_s, s, t, torch.randn(x0.shape, generator=generator)))
    last = reverse_step(scheduler, s, -1, zero, x_s, generator=generator)
    assert torch.allclose(out, (mask * x0 + (1 - mask) * last).clamp(-1, 1), atol=1e-6)


def test_works_with_any_noise_schedule(model):
    from ddpm_lib.schedule import NoiseSchedule

    schedule = NoiseSchedule(torch.linspace(1e-3, 0.3, 50))
    x0, mask = digits(), make_mask("centre")
    out = inpaint(model, schedule, x0, mask, 5, 1, seeded())
    assert torch.equal(out * mask, x0 * mask) and torch.isfinite(out).all()


def test_the_model_is_left_in_the_mode_it_was_in(scheduler, model):
    model.train()
    try:
        inpaint(model, scheduler, digits(), make_mask("left"), 2, 0, seeded())
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    "change, match",
    [
        ({"mask": torch.ones(1, 1, 27, 28)}, r"mask must broadcast to x0's shape \(3, 1, 28, 28\)"),
        ({"mask": torch.ones(2, 1, 28, 28)}, "mask must broadcast"),
        ({"mask": torch.full((1, 1, 28, 28), 0.5)}, "mask must hold only 1 .known. and 0 .missing."),
        ({"mask": [[1.0]]}, "mask must be a tensor"),
        ({"x0": digits() * 3}, r"x0 must lie in \[-1, 1\]"),
        ({"x0": torch.zeros(3, 1, 28, 28, dtype=torch.long)}, "x0 must be a floating-point tensor"),
        ({"x0": torch.full((3, 1, 28, 28), float("nan"))}, r"x0 must lie in \[-1, 1\]"),
        ({"num_steps": 0}, r"num_steps must lie in 1\.\.1000"),
        ({"num_steps": 1001}, r"num_steps must lie in 1\.\.1000"),
        ({"num_steps": 2.5}, "num_steps must be an integer"),
        ({"resample": -1}, "resample must be a non-negative integer"),
        ({"resample": 1.5}, "resample must be a non-negative integer"),
        ({"resample": True}, "resample must be a non-negative integer"),
        ({"generator": 0}, "generator must be a torch.Generator"),
        ({"model": torch.zeros(3, 1, 28, 28)}, "model must be a denoising network"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_argument(model, scheduler, change, match):
    arguments = {"model": model, "scheduler": scheduler, "x0": digits(), "mask": make_mask("left"),
                 "num_steps": 3, "resample": 1, "generator": seeded()}  # fmt: skip
    with pytest.raises(ValueError, match=match):
        inpaint(**{**arguments, **change})


# ---------------------------------------------------------------- command line


def test_cli_inpaint_writes_a_png(tmp_path, capsys):
    from PIL import Image

    from ddpm_lib.cli import main

    out = tmp_path / "inpaint.png"
    argv = ["inpaint", "--mask", "left", "--n", "3", "--steps", "3", "--resample", "1", "--out", str(out)]
    assert main([*argv, "--seed", "2", "--device", "cpu"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out).size == (3 * 30 + 2, 3 * 30 + 2)  # 3 rows (original, masked, inpainted) of 3
    printed = capsys.readouterr().out
    assert "3 held-out digits" in printed and "5 network calls" in printed
