"""Tests of ``ddpm_lib.unet`` (promoted from chapters/04_unet.py): shapes, time, gradients, checkpoints,
determinism and input checking. Configurations are tiny so the file runs in seconds on 2 CPU cores."""

import json

import pytest
import torch

from ddpm_lib.unet import (
    REFERENCE_CONFIG,
    ChannelShuffle,
    DenseDownsample,
    DenseUnit,
    SelfAttention,
    ShuffleDownsample,
    ShuffleUnit,
    Unet,
    sinusoidal_embedding,
)

TINY = dict(timesteps=50, time_embedding_dim=16, base_dim=8)
CONFIGS = {
    "default": dict(TINY),
    "reference-like": dict(
        TINY, dim_mults=[2, 4], time_embedding="learned", norm="batch", unit="shuffle", units_per_block=2
    ),
    "three levels, rgb": dict(TINY, in_channels=3, out_channels=2, dim_mults=[1, 2, 2], mid_units=2),
    "shuffle + group": dict(TINY, unit="shuffle", norm="group", dim_mults=[2]),
    "attention at two levels": dict(TINY, dim_mults=[2, 2], attention=[1, 2], prediction="v"),
}


def tiny_model(name: str = "default", seed: int = 0) -> Unet:
    torch.manual_seed(seed)
    return Unet(**CONFIGS[name])


def inputs(model: Unet, batch: int = 2, size: int = 16, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.config["in_channels"], size, size, generator=generator)
    t = torch.randint(0, model.config["timesteps"], (batch,), generator=generator)
    return x, t


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_matches_input(name, batch):
    model = tiny_model(name)
    x, t = inputs(model, batch=batch)
    out = model(x, t)
    assert out.shape == (batch, model.config["out_channels"], 16, 16)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_non_square_input_and_scalar_timesteps():
    model = tiny_model().eval()
    x = torch.randn(2, 1, 8, 24)
    assert model(x, 7).shape == x.shape
    with torch.no_grad():
        assert torch.equal(model(x, 7), model(x, torch.tensor(7)))
        assert torch.equal(model(x, torch.tensor(7)), model(x, torch.tensor([7, 7])))


@pytest.mark.parametrize("name", ["default", "reference-like"])
def test_time_input_changes_output(name):
    model = tiny_model(name).eval()
    x, _ = inputs(model)
    with torch.no_grad():
        early, late = model(x, 0), model(x, model.config["timesteps"] - 1)
    assert (early - late).abs().max() > 1e-4


@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_reach_every_parameter(name):
    model = tiny_model(name).train()
    for module in model.modules():  # attention's output starts at zero, which blocks its inputs' gradient
        if isinstance(module, SelfAttention):  # at the very first step only: move it off zero
            torch.nn.init.normal_(module.out.weight, std=0.1)
    x, t = inputs(model, batch=4)
    model(x, t).pow(2).mean().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name", CONFIGS)
def test_config_and_state_dict_rebuild_the_same_network(name):
    model = tiny_model(name, seed=0)
    x, t = inputs(model, batch=4)
    model.train()
    model(x, t)  # a train-mode pass moves BatchNorm's running statistics away from their defaults
    model.eval()
    # what a checkpoint holds: the config (plain JSON data) and the state dict, BatchNorm statistics included
    restored = Unet(**json.loads(json.dumps(model.config)))
    restored.load_state_dict(model.state_dict())
    restored.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t), restored(x, t))


@pytest.mark.parametrize("name", CONFIGS)
def test_eval_mode_is_deterministic(name):
    model = tiny_model(name).eval()
    x, t = inputs(model)
    with torch.no_grad():
        first = model(x, t)
        assert torch.equal(first, model(x, t))
        # eval mode: one image's output does not depend on the rest of the batch
        assert torch.allclose(first[:1], model(x[:1], t[:1]), atol=1e-5)


def test_groupnorm_model_is_the_same_in_train_and_eval_mode():
    model = tiny_model()
    x, t = inputs(model)
    with torch.no_grad():
        assert torch.equal(model.train()(x, t), model.eval()(x, t))


def test_config_rebuilds_the_model_and_is_json():
    model = Unet(**CONFIGS["three levels, rgb"])
    assert json.loads(json.dumps(model.config)) == model.config
    clone = Unet(**model.config)
    assert clone.config == model.config
    assert [p.shape for p in clone.parameters()] == [p.shape for p in model.parameters()]


def test_reference_configuration_parameter_count():
    assert sum(p.numel() for p in Unet(**REFERENCE_CONFIG).parameters()) == 261_873
    assert sum(p.numel() for p in Unet().parameters()) >= 261_873


def test_bfloat16_autocast_and_float64():
    model = tiny_model().eval()
    x, t = inputs(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(x, t).float()).all()
    with torch.no_grad():
        assert model.double()(x.double(), t).dtype == torch.float64


def test_building_blocks_shapes():
    x = torch.randn(2, 16, 8, 8)
    assert ShuffleUnit(16, 8)(x).shape == (2, 8, 8, 8)
    assert ShuffleDownsample(16, 32)(x).shape == (2, 32, 4, 4)
    assert DenseUnit(16, 8)(x).shape == (2, 8, 8, 8)
    assert DenseDownsample(16, 32, norm="batch")(x).shape == (2, 32, 4, 4)
    shuffled = ChannelShuffle(4)(torch.arange(16.0).view(1, 16, 1, 1)).flatten()
    assert sorted(shuffled.tolist()) == list(range(16)) and shuffled[:4].tolist() == [0, 4, 8, 12]


def test_sinusoidal_embedding():
    t = torch.tensor([0, 1, 999])
    embedding = sinusoidal_embedding(t, 8)
    assert embedding.shape == (3, 8)
    assert torch.equal(embedding[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.allclose(embedding[:, :4] ** 2 + embedding[:, 4:] ** 2, torch.ones(3, 4))
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_embedding(t, 7)


GOOD_X = torch.zeros(2, 1, 16, 16)
GOOD_T = torch.tensor([1, 2])
BAD_INPUTS = {
    "three channels": (torch.zeros(2, 3, 16, 16), GOOD_T, "x"),
    "3-d x": (torch.zeros(2, 16, 16), GOOD_T, "x"),
    "empty batch": (torch.zeros(0, 1, 16, 16), torch.zeros(0, dtype=torch.long), "x"),
    "size not divisible": (torch.zeros(2, 1, 18, 18), GOOD_T, "multiples of 4"),
    "integer x": (torch.zeros(2, 1, 16, 16, dtype=torch.long), GOOD_T, "floating-point"),
    "x not a tensor": ([[0.0]], GOOD_T, "x"),
    "float t": (GOOD_X, torch.tensor([1.0, 2.0]), "integer"),
    "bool t": (GOOD_X, True, "t"),
    "t as a list": (GOOD_X, [1, 2], "t"),
    "t of shape (2, 1)": (GOOD_X, torch.tensor([[1], [2]]), r"shape \(2,\)"),
    "t of wrong batch": (GOOD_X, torch.tensor([1, 2, 3]), r"shape \(2,\)"),
    "t too large": (GOOD_X, torch.tensor([1, 50]), r"0\.\.49"),
    "t negative": (GOOD_X, -1, r"0\.\.49"),
}


@pytest.mark.parametrize("what", BAD_INPUTS)
def test_bad_input_raises_value_error(what):
    x, t, message = BAD_INPUTS[what]
    with pytest.raises(ValueError, match=message):
        tiny_model()(x, t)


BAD_CONFIGS = {
    "odd base_dim": (dict(base_dim=33), "base_dim"),
    "zero base_dim": (dict(base_dim=0), "base_dim"),
    "float base_dim": (dict(base_dim=32.0), "base_dim"),
    "shuffle base_dim not a multiple of 4": (dict(base_dim=34, unit="shuffle"), "base_dim"),
    "no levels": (dict(dim_mults=[]), "dim_mults"),
    "zero multiplier": (dict(dim_mults=[2, 0]), "dim_mults"),
    "string dim_mults": (dict(dim_mults="24"), "dim_mults"),
    "zero timesteps": (dict(timesteps=0), "timesteps"),
    "bool timesteps": (dict(timesteps=True), "timesteps"),
    "odd time_embedding_dim": (dict(time_embedding_dim=63), "time_embedding_dim"),
    "zero in_channels": (dict(in_channels=0), "in_channels"),
    "unknown norm": (dict(norm="layer"), "norm"),
    "unknown unit": (dict(unit="resnet"), "unit"),
    "unknown time embedding": (dict(time_embedding="fourier"), "time_embedding"),
    "zero units": (dict(units_per_block=0), "units_per_block"),
    "zero mid units": (dict(mid_units=0), "mid_units"),
    "attention below the bottleneck": (dict(attention=[3]), "attention must list levels 0..2"),
    "attention as text": (dict(attention="2"), "attention must be a list of levels"),
    "attention as a bool": (dict(attention=[True]), "attention must list levels"),
    "unknown prediction": (dict(prediction="noise"), "prediction must be one of 'eps', 'v', 'x0'"),
}


@pytest.mark.parametrize("what", BAD_CONFIGS)
def test_bad_configuration_raises_value_error(what):
    config, message = BAD_CONFIGS[what]
    with pytest.raises(ValueError, match=message):
        Unet(**config)


def test_attention_goes_where_it_is_asked_and_starts_as_the_identity():
    torch.manual_seed(0)
    plain = Unet(**TINY, dim_mults=[2, 2])
    attending = Unet(**TINY, dim_mults=[2, 2], attention=[1, 2])
    assert isinstance(attending.mid_attention, SelfAttention)  # level 2: the bottleneck
    assert isinstance(attending.encoder_blocks[1].attention, SelfAttention)  # level 1, on the way down
    assert isinstance(attending.decoder_blocks[0].attention, SelfAttention)  # level 1, on the way up
    assert not isinstance(attending.encoder_blocks[0].attention, SelfAttention)
    assert not isinstance(attending.decoder_blocks[1].attention, SelfAttention)
    # no attention: no new parameters, so checkpoints written before the option still load
    assert set(plain.state_dict()) == set(Unet(**TINY, dim_mults=[2, 2], attention=[]).state_dict())
    missing, unexpected = attending.load_state_dict(plain.state_dict(), strict=False)
    assert (
        not unexpected
        and missing
        and all(".attention." in f".{name}" or name.startswith("mid_attention") for name in missing)
    )
    x, t = inputs(plain)
    with torch.no_grad():
        assert torch.equal(attending.eval()(x, t), plain.eval()(x, t))


def test_self_attention_is_softmax_of_queries_and_keys_over_positions():
    torch.manual_seed(1)
    block = SelfAttention(64, head_dim=16)
    torch.nn.init.normal_(block.out.weight, std=0.1)
    x = torch.randn(2, 64, 5, 3)
    q, k, v = block.qkv_heads(x)
    assert block.heads == 4 and q.shape == (2, 4, 15, 16)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
    torch.testing.assert_close(block.attention_weights(x), weights)
    expected = x + block.out((weights @ v).transpose(-1, -2).reshape(x.shape))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert SelfAttention(8).heads == 1  # narrower than one head: one head
    assert SelfAttention(48).heads == 1 and SelfAttention(96).heads == 3
    with pytest.raises(ValueError, match="split evenly"):
        SelfAttention(100)  # 3 heads of 33.3 channels
