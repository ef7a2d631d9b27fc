"""Prediction targets (chapter 02, section 6; chapter 05, section 8): ε, v and x_0 convert into one another
exactly, the loss compares a network with its own target, every sampler gives the same samples whichever
target a network predicts, and the v-prediction step is diffusers' to 1e-4."""

import pytest
import torch
from stand_ins import ConditionalStandIn, StandIn
from torch import nn

from ddpm_lib.diffusion import PREDICTIONS, convert_prediction, prediction_of, prediction_target
from ddpm_lib.fast_sampling import ddim_step
from ddpm_lib.generation import generate
from ddpm_lib.inpainting import inpaint, make_mask
from ddpm_lib.sampling import predict_noise, reverse_step
from ddpm_lib.schedule import CosineScheduler, LinearBetaScheduler
from ddpm_lib.training import ddpm_loss
from ddpm_lib.unet import Conditioned, Unet


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler(1000, 1e-4, 0.02)


class AsTarget(nn.Module):
    """An ε-predicting network re-expressed as one that predicts ``target``: the same denoiser, other output."""

    def __init__(self, network, scheduler, target):
        super().__init__()
        self.network, self.scheduler = network, scheduler
        self.config = {**getattr(network, "config", {}), "prediction": target}

    def forward(self, x, t, *labels):
        alpha_bar = self.scheduler.get_bar_alpha(t).to(torch.float64)
        eps = self.network(x, t, *labels).to(torch.float64)
        return convert_prediction(eps, x.to(torch.float64), alpha_bar, "eps", self.config["prediction"]).to(
            x.dtype
        )


@pytest.mark.parametrize("t", [0, 1, 250, 999])
def test_every_target_converts_to_every_other_exactly(scheduler, t):
    generator = torch.Generator().manual_seed(t)
    x0 = torch.rand((3, 1, 6, 6), generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    a, s = float(scheduler.alpha_bars64[t]) ** 0.5, (1 - float(scheduler.alpha_bars64[t])) ** 0.5
    x_t = a * x0 + s * noise
    for alpha_bar in (
        float(scheduler.alpha_bars64[t]),
        torch.full((3,), float(scheduler.alpha_bars64[t]), dtype=torch.float64),
    ):
        for source in PREDICTIONS:
            for target in PREDICTIONS:
                got = convert_prediction(
                    prediction_target(source, x0, noise, alpha_bar), x_t, alpha_bar, source, target
                )
                torch.testing.assert_close(
                    got, prediction_target(target, x0, noise, alpha_bar), rtol=0, atol=1e-9
                )


def test_v_is_the_velocity_of_the_rotation(scheduler):
    """v = dx_t/dφ for x_t = cos φ x_0 + sin φ ε (Salimans & Ho 2022): √ᾱ ε − √(1 − ᾱ) x_0."""
    x0, noise = torch.tensor([0.5]), torch.tensor([-1.2])
    alpha_bar = 0.3
    phi = torch.acos(torch.tensor(alpha_bar).sqrt())
    expected = -torch.sin(phi) * x0 + torch.cos(phi) * noise
    torch.testing.assert_close(prediction_target("v", x0, noise, alpha_bar), expected)


def test_unknown_targets_are_refused_by_name():
    with pytest.raises(ValueError, match="prediction must be one of 'eps', 'v', 'x0'; got 'noise'"):
        prediction_target("noise", torch.zeros(1), torch.zeros(1), 0.5)
    with pytest.raises(ValueError, match="source must be one of"):
        convert_prediction(torch.zeros(1), torch.zeros(1), 0.5, "score")
    with pytest.raises(ValueError, match="prediction must be one of"):
        Unet(prediction="epsilon")


def test_prediction_of_looks_through_wrappers(scheduler):
    v_net = Unet(base_dim=8, dim_mults=[2], prediction="v")
    conditional = Unet(base_dim=8, dim_mults=[2], num_classes=3, prediction="x0")
    assert prediction_of(v_net) == "v"
    assert prediction_of(Conditioned(conditional, torch.zeros(2, dtype=torch.long))) == "x0"
    assert prediction_of(StandIn()) == "eps"
    assert prediction_of(lambda x, t: x) == "eps"
    assert Unet(base_dim=8, dim_mults=[2]).config["prediction"] == "eps"


def test_predict_noise_needs_the_schedule_for_other_targets(scheduler):
    v_model = AsTarget(StandIn(), scheduler, "v")
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="predicts 'v', not the noise: pass scheduler="):
        predict_noise(v_model, x, 10)
    torch.testing.assert_close(
        predict_noise(v_model, x, 10, scheduler), StandIn()(x, torch.full((2,), 10)), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("target", ["v", "x0"])
def test_the_loss_compares_the_output_with_the_network_s_own_target(scheduler, target):
    """A network that always outputs 0 scores E[target²]: for x_0-prediction exactly the images' mean square."""

    class Zero(nn.Module):
        config = {"prediction": target}

        def forward(self, x, t):
            return torch.zeros_like(x)

    x0 = torch.rand((64, 1, 8, 8), generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss = ddpm_loss(Zero(), scheduler, x0, torch.Generator().manual_seed(2))
    if target == "x0":
        torch.testing.assert_close(loss, x0.pow(2).mean())
    else:  # E[v²] = ᾱ E[ε²] + (1 − ᾱ) E[x_0²] averaged over t: between E[x_0²] and 1
        assert x0.pow(2).mean() < loss < 1.1


@pytest.mark.parametrize("target", ["v", "x0"])
def test_min_snr_weights_every_target_alike_in_x0_error(scheduler, target):
    """The same denoiser, expressed as ε, v or x_0, has the same min-SNR loss (its error in x_0, weighted by min(SNR, γ))."""
    x0 = torch.rand((32, 1, 8, 8), generator=torch.Generator().manual_seed(3)) * 2 - 1
    eps_loss = ddpm_loss(StandIn(), scheduler, x0, torch.Generator().manual_seed(4), weighting="min_snr")
    other = ddpm_loss(AsTarget(StandIn(), scheduler, target), scheduler, x0, torch.Generator().manual_seed(4),
                      weighting="min_snr")  # fmt: skip
    torch.testing.assert_close(other, eps_loss, rtol=1e-4, atol=1e-6)


SPECS = [
    dict(sampler="ddpm", steps=20),
    dict(sampler="clip", steps=20),
    dict(sampler="ddim", steps=10, eta=0.5),
    dict(sampler="ddim", steps=10, clip=True),
    dict(sampler="dpmpp", steps=10),
    dict(sampler="dpmpp", steps=10, clip=True),
]


@pytest.mark.parametrize("target", ["v", "x0"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_every_sampler_draws_the_same_samples_whatever_the_target(scheduler, target, spec):
    eps_samples = generate(StandIn(), scheduler, 3, seed=5, image_shape=(1, 6, 6), **spec)
    other = generate(
        AsTarget(StandIn(), scheduler, target), scheduler, 3, seed=5, image_shape=(1, 6, 6), **spec
    )
    torch.testing.assert_close(other, eps_samples, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["v", "x0"])
def test_guidance_and_inpainting_honour_the_target(scheduler, target):
    conditional = ConditionalStandIn(num_classes=4)
    converted = AsTarget(conditional, scheduler, target)
    spec = dict(sampler="ddpm", steps=10, guidance=2.0, seed=6, image_shape=(1, 6, 6))
    torch.testing.assert_close(
        generate(converted, scheduler, 4, **spec),
        generate(conditional, scheduler, 4, **spec),
        rtol=1e-4,
        atol=1e-4,
    )
    x0 = torch.rand((2, 1, 6, 6), generator=torch.Generator().manual_seed(7)) * 2 - 1
    mask = make_mask("left", 2, 6)
    results = [
        inpaint(
            model, scheduler, x0, mask, num_steps=10, resample=2, generator=torch.Generator().manual_seed(8)
        )
        for model in (StandIn(), AsTarget(StandIn(), scheduler, target))
    ]
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-4)


def test_a_cosine_schedule_converts_too():
    cosine = CosineScheduler(1000)
    samples = [
        generate(model, cosine, 2, sampler="clip", steps=10, seed=1, image_shape=(1, 4, 4))
        for model in (StandIn(), AsTarget(StandIn(), cosine, "v"))
    ]
    torch.testing.assert_close(samples[1], samples[0], rtol=1e-4, atol=1e-4)


# --- diffusers' v-prediction step ------------------------------------------------------------------------


diffusers = pytest.importorskip("diffusers")


def in_float64(theirs, scheduler):
    """diffusers' scheduler with our float64 ᾱ table: its float32 1 − ᾱ_t loses three digits near t = 0, and
    the comparison is of the arithmetic, not of float32 rounding."""
    theirs.alphas_cumprod = scheduler.alpha_bars64.clone()
    theirs.betas = (
        scheduler.betas64.clone()
        if hasattr(scheduler, "betas64")
        else 1
        - theirs.alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), theirs.alphas_cumprod[:-1]])
    )
    theirs.alphas = 1 - theirs.betas
    theirs.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    theirs.one = torch.tensor(1.0, dtype=torch.float64)
    return theirs


@pytest.mark.parametrize("clip", [False, True], ids=["ddpm", "clip"])
@pytest.mark.parametrize("t", [0, 1, 500, 999])
def test_the_v_prediction_step_matches_diffusers(scheduler, clip, t):
    theirs = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=clip, variance_type="fixed_small", prediction_type="v_prediction",
    )  # fmt: skip
    theirs.set_timesteps(1000)
    in_float64(theirs, scheduler)
    v_model = AsTarget(StandIn(), scheduler, "v").double()
    x_t = 1.5 * torch.randn((4, 1, 28, 28), generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    with torch.no_grad():
        v = v_model(x_t, torch.full((4,), t))
        expected = theirs.step(v, t, x_t, generator=torch.Generator().manual_seed(42)).prev_sample
        got = reverse_step(scheduler, t, t - 1, v_model, x_t, clip, torch.Generator().manual_seed(42))
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("t, t_prev", [(999, 899), (500, 400), (100, 0), (50, -1)])
def test_the_v_prediction_ddim_step_matches_diffusers(scheduler, t, t_prev):
    theirs = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False,
        set_alpha_to_one=True, prediction_type="v_prediction",
    )  # fmt: skip
    # diffusers jumps to t − T // n: choose n so that this is t_prev (below 0 for the clean end, ᾱ = 1)
    theirs.set_timesteps(1000 // (t - t_prev) if t_prev >= 0 else 19)
    in_float64(theirs, scheduler)
    v_model = AsTarget(StandIn(), scheduler, "v").double()
    x_t = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    with torch.no_grad():
        v = v_model(x_t, torch.full((2,), t))
        expected = theirs.step(v, t, x_t, eta=0.0).prev_sample
        got = ddim_step(scheduler, t, t_prev, v_model, x_t, eta=0.0)
    assert (got - expected).abs().max().item() < 1e-4


def test_prediction_of_looks_through_any_wrapper_and_refuses_one_it_cannot_read():
    """A wrapper may hold the network under any attribute (chapter 12's counter once held it as ``net``, and the
    samplers then took its v-output for the noise); two networks that disagree are an error, not a guess."""
    from torch import nn

    from ddpm_lib.diffusion import prediction_of
    from ddpm_lib.unet import Unet

    v, eps = Unet(base_dim=8, dim_mults=[2], prediction="v"), Unet(base_dim=8, dim_mults=[2])

    class Holder(nn.Module):
        def __init__(self, **networks):
            super().__init__()
            for name, network in networks.items():
                setattr(self, name, network)

    class PlainHolder:  # not a module at all
        def __init__(self, net):
            self.net = net

    assert prediction_of(Holder(net=v)) == "v" and prediction_of(Holder(outer=Holder(inner=v))) == "v"
    assert prediction_of(PlainHolder(v)) == "v"
    assert prediction_of(Holder(a=v, b=Holder(c=v))) == "v"
    assert (
        prediction_of(nn.Linear(2, 2)) == prediction_of(lambda x, t: x) == "eps"
    )  # no record: DDPM's choice
    with pytest.raises(ValueError, match="different targets"):
        prediction_of(Holder(a=v, b=eps))
