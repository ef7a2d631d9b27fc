"""ddpm_lib.generation: one SampleSpec, one generate() — seeding, default steps, labels, guidance, bad input."""

import pytest
import torch
from stand_ins import ConditionalStandIn, CountCalls, StandIn

from ddpm_lib.errors import UsageError
from ddpm_lib.generation import DEFAULT_STEPS, SampleSpec, balanced_labels, generate
from ddpm_lib.guidance import ClassifierFreeGuidance
from ddpm_lib.sampling import sample_loop
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.unet import Conditioned

SHORT = LinearBetaScheduler(100, 1e-3, 0.1)


def small(model, n=3, **options):
    return generate(model, SHORT, n, image_shape=(1, 6, 6), precision="float32", **options)


def test_batch_i_is_seeded_with_seed_plus_i():
    model = StandIn()
    five = small(model, 5, sampler="ddim", steps=4, seed=1, batch_size=2)
    assert torch.equal(five, small(model, 5, sampler="ddim", steps=4, seed=1, batch_size=2))
    assert not torch.equal(five, small(model, 5, sampler="ddim", steps=4, seed=2, batch_size=2))
    assert torch.equal(five[2:4], small(model, 2, sampler="ddim", steps=4, seed=2, batch_size=2))
    assert five.shape == (5, 1, 6, 6) and five.abs().max() <= 1 and five.dtype == torch.float32


def test_the_full_chain_is_chapter_05s_loop_from_the_seeded_noise():
    model = StandIn()
    for sampler in ("ddpm", "clip"):
        ours = small(model, 3, sampler=sampler, seed=7)
        generator = torch.Generator().manual_seed(7)
        x_T = torch.randn((3, 1, 6, 6), generator=generator)
        chain = sample_loop(model, SHORT, x_T, clip=sampler == "clip", generator=generator)
        assert torch.equal(ours, chain.clamp(-1, 1)), sampler


@pytest.mark.parametrize("sampler", list(DEFAULT_STEPS))
def test_each_sampler_has_one_default_step_count(sampler):
    model = CountCalls(StandIn())
    small(model, 2, sampler=sampler)
    assert model.calls == (DEFAULT_STEPS[sampler] or SHORT.num_timesteps)
    model.calls = 0
    small(model, 2, sampler=sampler, steps=7)
    assert model.calls == 7


def test_bfloat16_samples_are_float32_and_close_to_float32_ones():
    model = StandIn()
    a = generate(model, SHORT, 2, sampler="ddim", steps=5, image_shape=(1, 6, 6), precision="bfloat16")
    b = generate(model, SHORT, 2, sampler="ddim", steps=5, image_shape=(1, 6, 6), precision="float32")
    assert a.dtype == torch.float32 and (a - b).abs().max() < 0.05


def test_a_conditional_model_draws_every_class_in_turn_unless_told_otherwise():
    seen = []

    class Spy(ConditionalStandIn):
        def forward(self, x, t, y=None):
            seen.append(y.clone())
            return super().forward(x, t, y)

    model = Spy()
    small(model, 12, sampler="ddim", steps=1)
    assert seen[-1].tolist() == balanced_labels(12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    small(model, 3, sampler="ddim", steps=1, label=7)
    assert seen[-1].tolist() == [7, 7, 7]
    small(model, 2, sampler="ddim", steps=1, labels=torch.tensor([4, -1]))
    assert seen[-1].tolist() == [4, -1]


def test_guidance_is_classifier_free_guidance_of_the_labels():
    model = ConditionalStandIn()
    ours = small(model, 4, sampler="ddpm", steps=5, guidance=2.0, seed=3)
    labels = balanced_labels(4)
    theirs = small(
        Conditioned(ClassifierFreeGuidance(model, 2.0), labels), 4, sampler="ddpm", steps=5, seed=3
    )
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, small(model, 4, sampler="ddpm", steps=5, seed=3))


@pytest.mark.parametrize(
    "options, option, message",
    [
        ({"sampler": "euler"}, "sampler", "sampler must be one of ddpm, clip, ddim, dpmpp"),
        ({"sampler": "clip", "eta": 0.5}, "eta", "eta applies only to the sampler 'ddim'"),
        ({"sampler": "ddpm", "clip": True}, "clip", "use the sampler 'clip'"),
        ({"steps": 0}, "steps", "steps must be a positive integer or None"),
        ({"steps": 101}, "steps", r"steps must lie in 1\.\.100"),
        ({"spacing": "even"}, "spacing", "spacing must be one of leading, trailing, linspace"),
        ({"eta": 1.5, "sampler": "ddim"}, "eta", r"eta must be a number in \[0, 1\]"),
        ({"guidance": -2.0}, "guidance", "guidance must be a number >= -1"),
        ({"batch_size": 0}, "batch_size", "batch_size must be a positive integer"),
        ({"label": 3}, "label", "a label needs a class-conditional model"),
        ({"guidance": 1.0}, "guidance", "guidance needs a class-conditional model"),
    ],
)
def test_bad_specs_are_usage_errors_naming_the_option(options, option, message):
    with pytest.raises(UsageError, match=message) as caught:
        small(StandIn(), 2, **options)
    assert caught.value.option == option


def test_bad_requests_on_a_conditional_model():
    with pytest.raises(UsageError, match=r"label must lie in 0\.\.9"):
        small(ConditionalStandIn(), 2, label=10)
    with pytest.raises(UsageError, match=r"labels must be 2 integer class labels"):
        small(ConditionalStandIn(), 2, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(UsageError, match="n must be a positive integer"):
        small(ConditionalStandIn(), 0)


def test_describe_names_what_was_drawn():
    assert SampleSpec().describe(1000) == "clip, 1000 steps, seed 0"
    spec = SampleSpec(sampler="ddim", steps=20, eta=0.5, guidance=2, label=3, seed=4)
    assert spec.describe(1000) == "ddim, 20 steps (trailing), eta 0.5, guidance w = 2, label 3, seed 4"
