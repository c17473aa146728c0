"""The NNX VQ-GAN against taming-transformers' PyTorch modules on the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import yaml

from llmcxr_jax import checkpoint, cli
from llmcxr_jax.convert import taming
from llmcxr_jax.convert.mapping import ConversionError
from llmcxr_jax.models import common
from llmcxr_jax.models.vqgan import VQGAN, get_preset


def _taming(cfg, seed=0):
    torch.manual_seed(seed)
    ref = taming.taming_modules(cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:  # GroupNorm starts at 1/0: make every parameter matter
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
        # a spread-out codebook, as after training (taming's init is +-1/n_embed)
        ref.quantize.embedding.weight.normal_(0, 1.0)
    return ref


def _images(cfg, n=2, seed=0, channels=3):
    shape = (n, cfg.resolution, cfg.resolution, channels)
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _ours(ref, cfg):
    params, _ = taming.import_state_dict(ref.state_dict(), cfg)
    return common.with_variables(VQGAN, cfg, params)


@pytest.mark.parametrize("preset", ["tiny", "tiny-grey", "llmcxr-f16"])
def test_codes_and_pixels_match_taming(preset):
    if preset == "tiny-grey":  # the converter takes conv_in/conv_out shapes from the config
        cfg = get_preset("tiny", in_channels=1, out_ch=1)
    else:
        cfg = get_preset(preset)
    ref = _taming(cfg)
    model = _ours(ref, cfg)
    x = _images(cfg, n=1 if preset == "llmcxr-f16" else 2, channels=cfg.in_channels)
    with torch.no_grad():
        z_ref, loss_ref, codes_ref = ref.quantized(torch.from_numpy(x).permute(0, 3, 1, 2))
        pix_ref = ref.decode(codes_ref).permute(0, 2, 3, 1).numpy()
    codes = np.asarray(jax.jit(lambda m, x: m.encode(x))(model, jnp.asarray(x)))
    assert codes.shape == (x.shape[0], cfg.num_codes)
    np.testing.assert_array_equal(codes, codes_ref.numpy())
    pix = np.asarray(jax.jit(lambda m, c: m.decode(c))(model, jnp.asarray(codes)))
    np.testing.assert_allclose(pix, pix_ref, atol=1e-4, rtol=0)
    assert pix.shape[-1] == cfg.out_ch
    if preset == "tiny":  # the training path: same latents and the same legacy loss
        _, q = model(jnp.asarray(x))
        np.testing.assert_allclose(q.z_q, z_ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)
        np.testing.assert_allclose(q.loss, loss_ref.item(), rtol=1e-5)


def test_export_loads_strictly_into_taming_and_reproduces(tmp_path):
    cfg = get_preset("tiny")
    model = _ours(_taming(cfg, seed=1), cfg)
    ckpt, yml = taming.export_taming(cfg, common.variables_of(model), tmp_path / "vq.ckpt")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    fresh = taming.taming_modules(taming.read_taming_config(yml))
    fresh.load_state_dict(state, strict=True)
    x = _images(cfg, seed=2)
    with torch.no_grad():
        codes_ref = fresh.eval().encode(torch.from_numpy(x).permute(0, 3, 1, 2))
        pix_ref = fresh.decode(codes_ref).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(model.encode(jnp.asarray(x)), codes_ref.numpy())
    np.testing.assert_allclose(model.decode(codes_ref.numpy()), pix_ref, atol=1e-4)


def _write_taming_files(tmp_path, cfg, ref, extra=None):
    state = dict(ref.state_dict())
    state.update(extra or {})
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "last.ckpt")
    full = taming.config_to_taming(cfg)
    full["model"]["params"]["lossconfig"] = {
        "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
        "params": {"disc_start": 10000, "disc_weight": 0.8, "codebook_weight": 1.0},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(full))
    return tmp_path / "last.ckpt", tmp_path / "config.yaml"


def test_cli_import_reports_loss_tensors_and_round_trips(tmp_path, capsys):
    cfg = get_preset("tiny")
    ref = _taming(cfg, seed=3)
    loss = {
        "loss.discriminator.main.0.weight": torch.zeros(8, 3, 4, 4),
        "loss.perceptual_loss.lin0.model.1.weight": torch.zeros(1, 64, 1, 1),
    }
    ckpt, yml = _write_taming_files(tmp_path, cfg, ref, loss)
    cli.main(
        [
            "import-taming",
            "--ckpt",
            str(ckpt),
            "--config",
            str(yml),
            "--out",
            str(tmp_path / "ours"),
        ]
    )
    out = capsys.readouterr().out
    assert "2 loss.* tensors" in out
    model = checkpoint.load_model(tmp_path / "ours", expect="vqgan")
    x = _images(cfg, seed=4)
    with torch.no_grad():
        codes_ref = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(model.encode(jnp.asarray(x)), codes_ref.numpy())
    cli.main(
        [
            "export-taming",
            "--checkpoint",
            str(tmp_path / "ours"),
            "--out",
            str(tmp_path / "back.ckpt"),
        ]
    )
    back = torch.load(tmp_path / "back.ckpt", weights_only=True)["state_dict"]
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)


def test_bad_taming_inputs_are_named(tmp_path):
    cfg = get_preset("tiny")
    ref = _taming(cfg)
    state = ref.state_dict()
    state.pop("decoder.up.1.block.0.conv2.weight")
    with pytest.raises(ConversionError, match=r"missing tensor decoder\.up\.1\.block\.0\.conv2"):
        taming.import_state_dict(state, cfg)
    state = ref.state_dict()
    state["quantize.embedding.weight"] = torch.zeros(32, 32)
    with pytest.raises(
        ConversionError,
        match=r"quantize\.embedding\.weight has shape \(32, 32\)"
        r", expected \(64, 32\)",
    ):
        taming.import_state_dict(state, cfg)
    bad = taming.config_to_taming(cfg)
    bad["model"]["target"] = "taming.models.vqgan.GumbelVQ"
    with pytest.raises(ConversionError, match="GumbelVQ"):
        taming.config_from_taming(bad)
    (tmp_path / "x.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match=r"x\.ckpt: not a readable weights-only"):
        taming.import_taming(tmp_path / "x.ckpt", _write_taming_files(tmp_path, cfg, ref)[1])


def test_decode_rejects_wrong_code_count():
    model = common.abstract(VQGAN, get_preset("tiny"))
    with pytest.raises(ValueError, match="expected 256 codes per image, got 255"):
        jax.eval_shape(lambda: model.decode(jnp.zeros((1, 255), jnp.int32)))


def test_folded_upsample_equals_nearest_then_conv():
    from flax import nnx

    from llmcxr_jax.models.vqgan import Upsample

    up = Upsample(32, nnx.Rngs(0), jnp.float32)
    up.conv.bias[...] = jnp.arange(32.0) * 0.01
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7, 32)), jnp.float32)
    naive = up.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    np.testing.assert_allclose(up(x), naive, atol=1e-5)


def test_presets_channels():
    assert (get_preset("demo-f8").in_channels, get_preset("demo-f8").out_ch) == (1, 1)
    assert (get_preset("llmcxr-f16").in_channels, get_preset("llmcxr-f16").out_ch) == (3, 3)


def test_grey_film_round_trips_grey():
    """A grey model encodes a grey film given as RGB (replicated) or as one channel to the same
    codes, averages colour, and decodes one channel; an RGB model repeats a grey input."""
    from flax import nnx

    from llmcxr_jax.models.vqgan import to_channels

    cfg = get_preset("tiny", in_channels=1, out_ch=1)
    rng = np.random.default_rng(0)  # random variables: much faster than VQGAN's own init
    shapes = common.variables_of(common.abstract(VQGAN, cfg))
    tree = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
    model = common.with_variables(VQGAN, cfg, tree)
    grey = _images(cfg, n=2, seed=5, channels=1)
    rgb = np.repeat(grey, 3, axis=-1)
    np.testing.assert_array_equal(model.as_input(jnp.asarray(rgb)), grey)  # exactly
    encode = jax.jit(lambda m, x: m.encode(x))
    codes = np.asarray(encode(model, jnp.asarray(rgb)))
    np.testing.assert_array_equal(codes, np.asarray(encode(model, jnp.asarray(grey))))
    assert len(np.unique(codes)) > 1  # not a degenerate comparison
    pix = np.asarray(jax.jit(lambda m, c: m.decode(c))(model, jnp.asarray(codes)))
    assert pix.shape == (2, cfg.resolution, cfg.resolution, 1) and np.isfinite(pix).all()
    recon, _ = jax.eval_shape(lambda: model(jnp.asarray(rgb)))
    assert recon.shape == pix.shape
    colour = _images(cfg, n=2, seed=6)
    np.testing.assert_allclose(
        to_channels(jnp.asarray(colour), 1), colour.mean(-1, keepdims=True), atol=1e-6
    )

    rgb_model = common.abstract(VQGAN, get_preset("tiny"))
    np.testing.assert_array_equal(rgb_model.as_input(jnp.asarray(grey)), rgb)
    g, abstract_state = nnx.split(rgb_model)
    shape = lambda f, x: jax.eval_shape(lambda s: f(nnx.merge(g, s), x), abstract_state).shape
    assert shape(VQGAN.encode, jnp.asarray(grey)) == codes.shape
    assert shape(VQGAN.decode, jnp.asarray(codes)) == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="cannot turn 2-channel images into 3-channel"):
        to_channels(jnp.zeros((1, 4, 4, 2)), 3)
