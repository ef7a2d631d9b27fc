"""Class-conditional U-Nets (chapter 04, section 12), label dropout (chapter 05), classifier-free guidance and
autoguidance (chapter 10) and their command-line options."""

import json
from itertools import islice

import numpy as np
import pytest
import torch

from ddpm_lib.checkpoint import load_denoiser
from ddpm_lib.cli import main
from ddpm_lib.diffusion import prediction_of
from ddpm_lib.distributed import shard
from ddpm_lib.generation import generate
from ddpm_lib.guidance import AutoGuidance, ClassifierFreeGuidance, class_spread
from ddpm_lib.pretrained import WEIGHTS, recipe
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.spec import SampleSpec
from ddpm_lib.training import batch_stream, ddpm_loss, make_optimizer, train
from ddpm_lib.unet import Conditioned, Unet

TINY = dict(base_dim=8, dim_mults=[2])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Unet(**TINY, num_classes=10).eval()


@pytest.fixture(scope="module")
def scheduler():
    return LinearBetaScheduler()


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 1, 28, 28), generator=g), torch.randint(0, 1000, (n,), generator=g)


# --- the conditional U-Net ------------------------------------------------------------------------------


def test_the_label_embedding_has_a_row_for_no_label(model):
    assert model.label_embedding.weight.shape == (11, 64) and model.config["num_classes"] == 10
    x, t = batch()
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.full((6,), -1)))
        assert not torch.allclose(model(x, t, torch.zeros(6, dtype=torch.long)), model(x, t))
    assert Unet(**model.config).config == model.config  # the config rebuilds it


def test_an_unconditional_unet_is_unchanged_and_refuses_labels():
    torch.manual_seed(0)
    plain = Unet(**TINY)
    assert plain.config["num_classes"] is None and not hasattr(plain, "label_embedding")
    x, t = batch()
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, torch.zeros(6, dtype=torch.long))


@pytest.mark.parametrize(
    "labels, fragment",
    [
        (torch.full((6,), 10), r"0\.\.9"),
        (torch.full((6,), -2), r"0\.\.9"),
        (torch.zeros(5, dtype=torch.long), r"shape \(6,\)"),
        (torch.zeros(6), "integer"),
        ([0, 1, 2, 3, 4, 5], "integer tensor"),
    ],
)
def test_bad_labels_name_what_is_allowed(model, labels, fragment):
    x, t = batch()
    with pytest.raises(ValueError, match=fragment):
        model(x, t, labels)


def test_num_classes_must_be_a_positive_integer():
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            Unet(**TINY, num_classes=bad)


def test_conditioned_fixes_the_labels(model):
    x, t = batch()
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    with torch.no_grad():
        assert torch.equal(Conditioned(model, labels)(x, t), model(x, t, labels))
    assert next(Conditioned(model, labels).parameters()) is next(model.parameters())


# --- label dropout in the loss ----------------------------------------------------------------------------


def spy_labels(scheduler, n, dropout, seed=0):
    seen = []

    def spy(x, t, y):
        seen.append(y)
        return torch.zeros_like(x)

    ddpm_loss(spy, scheduler, torch.zeros((n, 1, 2, 2)), torch.Generator().manual_seed(seed),
              labels=torch.arange(n) % 10, label_dropout=dropout)  # fmt: skip
    return seen[0]


def test_label_dropout_replaces_that_share_of_labels_by_no_label(scheduler):
    shown = spy_labels(scheduler, 20_000, 0.1)
    assert abs((shown == -1).float().mean().item() - 0.1) < 0.01
    kept = shown >= 0
    assert torch.equal(shown[kept], (torch.arange(20_000) % 10)[kept])
    assert (spy_labels(scheduler, 100, 0.0) >= 0).all() and (spy_labels(scheduler, 100, 1.0) == -1).all()


def test_label_dropout_comes_after_t_and_noise_so_unconditional_runs_are_unchanged(scheduler):
    x0 = torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    seen = []

    def spy(x, t, y=None):
        seen.append((x.clone(), t.clone()))
        return torch.zeros_like(x)

    ddpm_loss(spy, scheduler, x0, torch.Generator().manual_seed(2))
    ddpm_loss(spy, scheduler, x0, torch.Generator().manual_seed(2), labels=torch.zeros(8, dtype=torch.long),
              label_dropout=0.5)  # fmt: skip
    assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])


def test_loss_rejects_bad_label_options(model, scheduler):
    x0 = torch.zeros((4, 1, 28, 28))
    with pytest.raises(ValueError, match="label_dropout"):
        ddpm_loss(model, scheduler, x0, labels=torch.zeros(4, dtype=torch.long), label_dropout=1.5)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        ddpm_loss(model, scheduler, x0, labels=torch.zeros(3, dtype=torch.long))


def test_sharded_conditional_losses_add_up_to_the_full_batch(scheduler):
    torch.manual_seed(0)
    net = Unet(**TINY, num_classes=10)
    x0 = torch.randn((8, 1, 28, 28), generator=torch.Generator().manual_seed(4))
    labels = torch.arange(8) % 10
    full = ddpm_loss(net, scheduler, x0, torch.Generator().manual_seed(5), labels=labels, label_dropout=0.3)
    shards = [ddpm_loss(net, scheduler, x0, torch.Generator().manual_seed(5), labels=labels, label_dropout=0.3,
                        part=shard(8, rank, 2)) for rank in range(2)]  # fmt: skip
    assert torch.allclose(full, torch.stack(shards).mean(), atol=1e-6)


def test_train_passes_each_batch_its_own_labels(scheduler):
    images = torch.arange(32, dtype=torch.float32).reshape(32, 1, 1, 1).expand(32, 1, 4, 4).contiguous()
    labels = torch.arange(32) * 10  # any integers: the spy only records them
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, y):
            seen.append(y)
            return x * self.w

    spy = Spy()
    train(spy, make_optimizer(spy), None, scheduler, images, steps=3, batch_size=8, seed=0,
          generator=torch.Generator().manual_seed(0), labels=labels)  # fmt: skip
    rows = [batch for _, batch in islice(batch_stream(torch.arange(32), 8, seed=0), 3)]
    assert [y.tolist() for y in seen] == [(r * 10).tolist() for r in rows]  # the labels of the batch's digits


# --- classifier-free guidance ------------------------------------------------------------------------


@pytest.mark.slow
def test_guidance_combines_the_two_predictions(model):
    x, t = batch()
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        conditional, unconditional = model(x, t, y), model(x, t)
        for w in (0.0, -1.0, 0.5, 3.0):
            expected = (1 + w) * conditional - w * unconditional
            assert torch.allclose(ClassifierFreeGuidance(model, w)(x, t, y), expected, atol=1e-5)
        assert torch.equal(
            ClassifierFreeGuidance(model, 3.0)(x, t), unconditional
        )  # no labels: nothing to guide


def test_guidance_rejects_unconditional_models_and_bad_scales(model):
    with pytest.raises(ValueError, match="class-conditional"):
        ClassifierFreeGuidance(Unet(**TINY), 1.0)
    for bad in (-1.5, float("nan"), "2"):
        with pytest.raises(ValueError, match="guidance"):
            ClassifierFreeGuidance(model, bad)


# --- autoguidance ---------------------------------------------------------------------------------------


def _pair(prediction="v", **options):
    torch.manual_seed(1)
    good = Unet(**TINY, prediction=prediction, **options).eval()
    weak = Unet(**TINY, prediction=prediction, **options).eval()
    return good, weak


@pytest.mark.parametrize("w", [0.0, -1.0, 0.5, 2.0])
def test_autoguidance_extrapolates_from_the_weak_model_to_the_good_one(w):
    good, weak = _pair()
    x, t = batch()
    guided = AutoGuidance(good, weak, w)
    with torch.no_grad():
        expected = (1 + w) * good(x, t) - w * weak(x, t)
        assert torch.allclose(guided(x, t), expected, atol=1e-5)
    # the samplers read the target through the wrapper: a v-predicting pair stays v-predicting
    assert prediction_of(guided) == "v" and guided.config == good.config


def test_autoguidance_passes_the_label_to_both_models(model):
    torch.manual_seed(2)
    weak = Unet(**TINY, num_classes=10).eval()
    x, t = batch()
    y = torch.arange(6)
    with torch.no_grad():
        assert torch.allclose(
            AutoGuidance(model, weak, 1.0)(x, t, y), 2 * model(x, t, y) - weak(x, t, y), atol=1e-5
        )


def test_autoguidance_w0_calls_the_weak_model_not_at_all():
    good, _ = _pair()

    def weak(*args):
        raise AssertionError("the weak model was called")

    weak.config = good.config
    x, t = batch()
    with torch.no_grad():
        assert torch.equal(AutoGuidance(good, weak, 0.0)(x, t), good(x, t))


def test_every_sampler_accepts_an_autoguided_denoiser(scheduler):
    good, weak = _pair()
    guided = AutoGuidance(good, weak, 1.0)
    for sampler in ("ddpm", "clip", "ddim", "dpmpp"):
        out = generate(guided, scheduler, 2, sampler=sampler, steps=4, seed=0)
        assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


def test_autoguidance_on_an_interval_guides_only_its_steps():
    good, weak = _pair()
    x, _ = batch(4)
    t = torch.tensor([100, 200, 900, 901])  # one image per timestep: two inside [200, 900], two outside
    guided = AutoGuidance(good, weak, 2.0, interval=(200, 900))
    with torch.no_grad():
        everywhere = 3 * good(x, t) - 2 * weak(x, t)
        out, plain = guided(x, t), good(x, t)
        assert torch.allclose(out[1:3], everywhere[1:3], atol=1e-5) and torch.equal(
            out[[0, 3]], plain[[0, 3]]
        )
        # the same for one timestep for the whole batch, as the samplers call it
        assert torch.allclose(guided(x, 500), 3 * good(x, 500) - 2 * weak(x, 500), atol=1e-5)
        # an interval over every step is no interval
        every_step = AutoGuidance(good, weak, 2.0, interval=(0, 999))
        assert torch.equal(every_step(x, t), AutoGuidance(good, weak, 2.0)(x, t))

    def never(*args):
        raise AssertionError("the weak model was called outside the interval")

    never.config = good.config
    with torch.no_grad():
        assert torch.equal(AutoGuidance(good, never, 2.0, interval=(200, 900))(x, 950), good(x, 950))


@pytest.mark.parametrize("interval", [(900, 200), (-1, 5), (1.5, 3), (1,), "200:900", (True, 5)])
def test_autoguidance_refuses_a_bad_interval(interval):
    good, weak = _pair()
    with pytest.raises(ValueError, match="interval must be None or"):
        AutoGuidance(good, weak, 1.0, interval=interval)


@pytest.mark.parametrize(
    "weak_options, guidance, fragment",
    [
        (dict(prediction="eps"), 1.0, "same target"),
        (dict(prediction="v", num_classes=10), 1.0, "same labels"),
        (dict(prediction="v"), -2.0, ">= -1"),
        (dict(prediction="v"), float("nan"), "finite number"),
        (dict(prediction="v"), True, "finite number"),
    ],
)
def test_autoguidance_refuses_mismatched_models_and_bad_scales(weak_options, guidance, fragment):
    good = Unet(**TINY, prediction="v")
    with pytest.raises(ValueError, match=fragment):
        AutoGuidance(good, Unet(**TINY, **weak_options), guidance)


def test_class_spread():
    features = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 10.0], [10.0, 10.0], [1.0, 1.0]])
    spread = class_spread(features, np.array([0, 0, 1, 1, 2]))
    assert spread == {0: 5.0, 1: 0.0}  # a class with one member has no spread
    with pytest.raises(ValueError, match="features"):
        class_spread(features, np.array([0, 1]))


# --- the command line ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    tiny = ["--steps", "2", "--batch-size", "8", "--base-dim", "8", "--dim-mults", "2", "--eval-every", "0"]
    assert main(["train", *tiny, "--num-classes", "10", "--label-dropout", "0.2", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    return out


@pytest.mark.slow
def test_train_records_a_conditional_run(conditional_run):
    config = json.loads((conditional_run / "config.json").read_text())
    assert config["model"]["num_classes"] == 10 and config["label_dropout"] == 0.2
    model, _, _ = load_denoiser(conditional_run / "checkpoints" / "last.pt")
    assert model.config["num_classes"] == 10


@pytest.mark.slow
def test_sample_a_label_with_guidance(conditional_run, tmp_path, capsys):
    out = tmp_path / "sevens.png"
    args = ["sample", "--checkpoint", str(conditional_run / "checkpoints" / "last.pt"), "--label", "7",
            "--guidance", "2", "--n", "3", "--sampler", "ddpm", "--steps", "3", "--out", str(out),
            "--tensors", str(tmp_path / "s.pt"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert out.exists() and torch.load(tmp_path / "s.pt", weights_only=True).shape == (3, 1, 28, 28)
    assert "guidance w = 2, label 7" in capsys.readouterr().out


@pytest.mark.slow
def test_conditioning_options_on_the_wrong_model_exit_2_with_one_line(conditional_run, tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    import ddpm_lib.precision as precision

    # one line also where sample notes that it falls back to float32 (a CPU without bfloat16 instructions)
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    unconditional = tmp_path / "plain"
    tiny = ["--steps", "1", "--batch-size", "8", "--base-dim", "8", "--dim-mults", "2", "--eval-every", "0"]
    assert main(["train", *tiny, "--out", str(unconditional), "--no-progress"]) == 0
    cases = [
        (["sample", "--checkpoint", str(unconditional / "checkpoints" / "last.pt"), "--label", "3"],
         "--label: a label needs a class-conditional model"),
        (["sample", "--checkpoint", str(conditional_run / "checkpoints" / "last.pt"), "--label", "10"],
         "--label: label must lie in 0..9"),
        (["sample", "--checkpoint", str(conditional_run / "checkpoints" / "last.pt"), "--weights", "ddpm_mnist"],
         "argument --weights: not allowed with argument --checkpoint"),
        (["sample", "--guidance", "-3"], "a number >= -1"),
    ]  # fmt: skip
    for args, fragment in cases:
        try:
            code = main([*args, "--n", "1", "--out", str(tmp_path / "x.png")])
        except SystemExit as exit_:
            code = exit_.code
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and fragment in lines[0], (args, lines)


def test_sample_autoguided_by_a_snapshot_of_the_shipped_run(tmp_path, capsys):
    out = tmp_path / "digits.png"
    args = ["sample", "--weights", "ddpm_mnist", "--weak", "ddpm_mnist@4000", "--autoguidance", "1.5", "--n", "2",
            "--sampler", "ddpm", "--steps", "2", "--out", str(out), "--tensors", str(tmp_path / "s.pt"),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert torch.load(tmp_path / "s.pt", weights_only=True).shape == (2, 1, 28, 28)
    assert "autoguided away from ddpm_mnist@4000 (w = 1.5)" in capsys.readouterr().out


def test_sample_autoguided_on_an_interval(tmp_path, capsys, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        "ddpm_lib.generation.generate",
        lambda model, scheduler, n, spec, **k: seen.update(spec=spec) or torch.zeros(1, 1, 28, 28),
    )  # no sampling
    args = ["sample", "--weights", "ddpm_mnist", "--weak", "ddpm_mnist@4000", "--guidance-interval", "200:900",
            "--n", "1", "--out", str(tmp_path / "x.png")]  # fmt: skip
    assert main(args) == 0
    assert "autoguided away from ddpm_mnist@4000 (w = 1, only for 200 <= t <= 900)" in capsys.readouterr().out
    assert seen["spec"].guidance_interval == (200, 900)


def test_shipped_weights_are_sampled_by_their_recipe_as_if_its_options_were_given(tmp_path, capsys):
    common = ["--n", "2", "--no-progress", "--out", str(tmp_path / "x.png")]
    assert main(["sample", "--weights", "ddpm_mnist", *common, "--tensors", str(tmp_path / "recipe.pt")]) == 0
    out = capsys.readouterr().out
    assert "ddpm_mnist's sampling recipe (ddpm_mnist.sampling.json)" in out
    assert "(ddpm, 25 steps (trailing), autoguided away from ddpm_mnist@4000 (w = 1), seed 0)" in out
    recipe = json.loads((WEIGHTS / "ddpm_mnist.sampling.json").read_text())["use"]
    spelled = ["--sampler", recipe["sampler"], "--steps", str(recipe["steps"]), "--weak", recipe["weak"],
               "--autoguidance", str(recipe["autoguidance"])]  # fmt: skip
    own = [
        "sample",
        "--weights",
        "ddpm_mnist",
        "--no-recipe",
        *spelled,
        *common,
        "--tensors",
        str(tmp_path / "own.pt"),
    ]
    assert main(own) == 0
    assert "sampling recipe" not in capsys.readouterr().out
    assert torch.equal(*(torch.load(tmp_path / f, weights_only=True) for f in ("recipe.pt", "own.pt")))


@pytest.mark.parametrize(
    "options, described",
    [
        (
            ["--sampler", "clip"],
            "(clip, 25 steps (trailing), autoguided away from ddpm_mnist@4000 (w = 1), seed 0)",
        ),
        (
            ["--steps", "3"],
            "(ddpm, 3 steps (trailing), autoguided away from ddpm_mnist@4000 (w = 1), seed 0)",
        ),
        (["--weak", "ddpm_mnist@8000", "--steps", "2"], "autoguided away from ddpm_mnist@8000 (w = 1)"),
        (["--weak=ddpm_mnist@8000", "--autoguidance=0"], "autoguided away from ddpm_mnist@8000 (w = 0)"),
        (["--guidance-interval", "200:900"], "(w = 1, only for 200 <= t <= 900)"),
        (["--no-recipe"], "(clip, 1000 steps, seed 0)"),  # the plain model, every step
        (["--no-recipe", "--steps", "3"], "(clip, 3 steps (trailing), seed 0)"),
    ],
)
def test_sampling_options_override_the_recipe_field_by_field(
    options, described, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(
        "ddpm_lib.generation.generate", lambda *a, **k: torch.zeros(1, 1, 28, 28)
    )  # no sampling
    assert (
        main(["sample", "--weights", "ddpm_mnist", *options, "--n", "1", "--out", str(tmp_path / "x.png")])
        == 0
    )
    out = capsys.readouterr().out
    assert ("sampling recipe" in out) == ("--no-recipe" not in options) and described in out, out


def test_every_sampling_recipe_names_known_options_and_records_its_evaluation():
    recipes = sorted(WEIGHTS.glob("*.sampling.json"))
    assert [p.name for p in recipes] == ["ddpm_mnist.sampling.json"]
    for path in recipes:
        record = json.loads(path.read_text())
        name = path.name.removesuffix(".sampling.json")
        assert set(record["use"]) <= set(SampleSpec().to_dict())
        assert recipe(name).spec == SampleSpec(**record["use"])
        evaluation = record["evaluation"]
        # the bare command gives the recorded scores: no sampling option, so the recipe
        assert evaluation["command"] == f"python -m ddpm_lib evaluate --weights {name} --n 500"
        assert {"machine", "torch", "wall_time_s", "date", "confident_share", "frechet_distance",
                "real_vs_real_floor", "classes_present"} <= set(evaluation)  # fmt: skip
        ratio = evaluation["frechet_distance"] / evaluation["real_vs_real_floor"]
        assert round(ratio, 2) == evaluation["frechet_over_floor"]


def test_evaluate_records_the_recipe_it_followed(tmp_path, capsys):
    report = tmp_path / "e.json"
    assert main(["evaluate", "--weights", "ddpm_mnist", "--n", "4", "--draws", "2", "--json", str(report),
                 "--no-progress"]) == 0  # fmt: skip
    record = json.loads(report.read_text())
    assert record["recipe"] == "ddpm_lib/weights/ddpm_mnist.sampling.json"
    spec = record["spec"]
    assert (record["sampler"], record["steps"], spec["weak"], spec["autoguidance"]) == (
        "ddpm",
        25,
        "ddpm_mnist@4000",
        1.0,
    )
    assert spec["guidance_interval"] is None  # the recipe guides every step


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--weak", "ddpm_mnist@123"], "--weak: ddpm_mnist has snapshots at steps 4000, 8000"),
        (["--weak", "no_such_weights"], "--weak: "),
        (["--weak", "{tmp}/truncated.pt"], "--weak: {tmp}/truncated.pt is not a readable checkpoint"),
        (
            ["--no-recipe", "--autoguidance", "2"],
            "--autoguidance: needs --weak, the weights to guide away from",
        ),
        (
            ["--weights", "ddpm_mnist_cond", "--autoguidance", "2"],
            "--autoguidance: needs --weak, the weights to guide away from",
        ),
        (
            ["--weak", "ddpm_mnist@4000", "--autoguidance", "-2"],
            "argument --autoguidance: expected a number >= -1",
        ),
        (
            ["--weights", "ddpm_mnist_cond", "--guidance-interval", "200:900"],
            "--guidance-interval: needs --weak, the weights to guide away from",
        ),
        (["--guidance-interval", "900:200"], "argument --guidance-interval: expected LO:HI"),
        (["--guidance-interval", "200"], "argument --guidance-interval: expected LO:HI"),
        (
            ["--weights", "ddpm_mnist_cond", "--weak", "ddpm_mnist"],
            "--weak: weak must predict the same target",
        ),
    ],
)
def test_bad_autoguidance_options_exit_2_with_one_line(options, fragment, tmp_path, capsys):
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 cut short")
    options, fragment = [o.format(tmp=tmp_path) for o in options], fragment.format(tmp=tmp_path)
    try:
        code = main(["sample", *(["--weights", "ddpm_mnist"] if "--weights" not in options else []), *options,
                     "--n", "1", "--steps", "1", "--out", str(tmp_path / "x.png"), "--no-progress"])  # fmt: skip
    except SystemExit as exit_:
        code = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], (options, lines)
