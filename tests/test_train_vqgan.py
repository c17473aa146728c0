"""VQ-GAN training: it learns, the clinical loss pulls, and a killed run resumes exactly."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llmcxr_jax import checkpoint
from llmcxr_jax.configs import load
from llmcxr_jax.models import densenet
from llmcxr_jax.models.vqgan import VQGAN, get_preset
from llmcxr_jax.train import state_checkpoint as train_ckpt
from llmcxr_jax.train import vqgan, vqgan_step
from llmcxr_jax.train.metric_writers import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "vqgan_demo.py") + ":test"


def test_a_few_hundred_steps_lower_reconstruction_loss(tmp_path):
    config = load(
        CONFIG,
        [
            "--config.steps=200",
            "--config.log_every=20",
            "--config.mesh=(-1,1,1)",
            "--config.ckpt_every=100",
            "--config.sample_every=100",
        ],
    )
    vqgan.train(config, tmp_path, progress=False)
    logged = read_metrics(tmp_path)
    first, last = logged[0], logged[-1]
    assert last["step"] == 200
    assert last["l1"] < 0.6 * first["l1"], (first["l1"], last["l1"])
    assert last["disc_factor"] == 1.0 and last["d_weight"] > 0  # the GAN loss switched on
    assert last["clinical"] > 0 and last["perplexity"] > 1
    assert (tmp_path / "samples" / "step_000200.png").exists()
    model = checkpoint.load_model(tmp_path / "model", expect="vqgan")
    assert model.config == get_preset("tiny")
    assert (tmp_path / "classifier" / "model_config.json").exists()  # trained for the loss


def test_clinical_loss_has_a_nonzero_gradient():
    clf = densenet.DenseNet(densenet.get_preset("tiny"), rngs=nnx.Rngs(0))
    g, s = nnx.split(clf)
    frozen = vqgan.Frozen(lpips=None, classifier=(g, s, ("pooled", "block2")))
    ae = VQGAN(get_preset("tiny"), rngs=nnx.Rngs(1))
    ae_g, ae_p = nnx.split(ae, nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)

    def loss(p):
        xrec, _ = nnx.merge(ae_g, p)(x)
        return vqgan_step.clinical_loss(frozen, {"classifier": s}, x, xrec)

    value, grads = jax.value_and_grad(loss)(ae_p)
    norms = [float(jnp.linalg.norm(v)) for v in jax.tree.leaves(grads)]
    assert value > 0 and all(np.isfinite(norms)) and max(norms) > 0
    # and it reaches the encoder (through the straight-through estimator), not only the decoder
    enc = jax.tree.leaves(nnx.state(nnx.merge(ae_g, grads).encoder))
    assert max(float(jnp.linalg.norm(v)) for v in enc) > 0


def _run(workdir, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmcxr_jax.cli",
            "train-vqgan",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            "--config.steps=30",
            "--config.log_every=1",
            "--config.ckpt_every=10",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def _final_state(workdir):
    ckpt = train_ckpt.TrainCheckpointer(workdir, every=10)
    step = ckpt.steps()[-1]
    flat, _ = ckpt.read_flat(step)
    ckpt.close()
    return step, flat


def test_killed_run_resumes_from_its_last_checkpoint_and_matches(tmp_path):
    ref = _run(tmp_path / "ref")
    ref_out = ref.communicate(timeout=600)[0]
    assert ref.returncode == 0, ref_out

    proc = _run(tmp_path / "run")
    deadline = time.time() + 600
    while time.time() < deadline:  # preempt once step 14 is done
        logged = read_metrics(tmp_path / "run")
        if logged and logged[-1]["step"] >= 14:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "SIGTERM: saved step" in out
    killed_at = train_ckpt.TrainCheckpointer(tmp_path / "run", every=10).steps()[-1]
    assert 14 <= killed_at < 30

    resumed = _run(tmp_path / "run")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert f"resumed from {tmp_path / 'run' / 'checkpoints'}/{killed_at}" in out
    step_a, a = _final_state(tmp_path / "ref")
    step_b, b = _final_state(tmp_path / "run")
    assert step_a == step_b == 30
    assert a.keys() == b.keys()
    for k in a:  # bitwise: same data order, same arithmetic
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_corrupt_newest_checkpoint_falls_back(tmp_path, library_log):
    config = load(CONFIG, ["--config.steps=20", "--config.ckpt_every=10"])
    vqgan.train(config, tmp_path, progress=False)
    ckpt = train_ckpt.TrainCheckpointer(tmp_path, every=10)
    assert ckpt.steps() == [10, 20]
    for f in (tmp_path / "checkpoints" / "20").rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    config.steps = 25
    vqgan.train(config, tmp_path, progress=False)
    out = library_log()
    ckpts = tmp_path / "checkpoints"
    assert f"checkpoint {ckpts}/20" in out and "truncated or damaged" in out
    assert (ckpts / "20.damaged").is_dir()
    assert train_ckpt.TrainCheckpointer(tmp_path, every=10).steps() == [10, 20, 25]
    assert "resumed from" in out and out.split("resumed from")[1].split()[0].endswith("/10")


def test_finetune_from_taming_with_its_lpips_and_discriminator(tmp_path, library_log):
    """A taming training checkpoint brings the VQ-GAN, LPIPS and the discriminator along."""
    import torch

    from llmcxr_jax.convert import lpips as lpips_convert
    from llmcxr_jax.convert import taming
    from llmcxr_jax.models import common
    from llmcxr_jax.models.discriminator import DiscriminatorConfig, NLayerDiscriminator
    from llmcxr_jax.models.lpips import LPIPS

    cfg = get_preset("tiny")
    ae = VQGAN(cfg, rngs=nnx.Rngs(5))
    disc_cfg = DiscriminatorConfig(ndf=16, n_layers=2)
    state = {
        **taming.export_state_dict(cfg, common.variables_of(ae)),
        **lpips_convert.export_lpips(common.variables_of(LPIPS(rngs=nnx.Rngs(6)))),
        **lpips_convert.export_discriminator(
            common.variables_of(NLayerDiscriminator(disc_cfg, rngs=nnx.Rngs(7))), disc_cfg
        ),
    }
    # trained LPIPS heads are non-negative (random ones are not)
    state = {k: np.abs(v) if ".lin" in k else v for k, v in state.items()}
    torch.save(
        {"state_dict": {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}},
        tmp_path / "last.ckpt",
    )
    (tmp_path / "cfg.yaml").write_text(__import__("yaml").safe_dump(taming.config_to_taming(cfg)))
    ckpt, yml = str(tmp_path / "last.ckpt"), str(tmp_path / "cfg.yaml")
    config = load(
        CONFIG,
        [
            f"--config.init.taming_ckpt={ckpt}",
            f"--config.init.taming_config={yml}",
            f"--config.loss.perceptual_taming_ckpt={ckpt}",
            "--config.loss.perceptual_weight=1.0",
            "--config.steps=4",
            "--config.log_every=2",
            "--config.loss.clinical_weight=0.0",
        ],
    )
    metrics = vqgan.train(config, tmp_path / "w", progress=False)
    assert "discriminator: taming's" in library_log()
    assert metrics["perceptual"] > 0 and "clinical" not in metrics
    first = read_metrics(tmp_path / "w")[0]
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)), jnp.float32)
    assert first["l1"] > 0 and np.isfinite(first["loss"])
    assert np.asarray(ae.encode(x)).shape == (1, 256)


def test_missing_loss_weights_are_explained(tmp_path):
    config = load(CONFIG, ["--config.loss.perceptual_weight=1.0"])
    with pytest.raises(ValueError, match="perceptual_weight > 0 needs LPIPS weights"):
        vqgan.train(config, tmp_path, progress=False)
    config = load(CONFIG, ["--config.data.source=folder:" + str(tmp_path)])
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="needs a CXR classifier"):
        vqgan.train(config, tmp_path / "w", progress=False)
    assert json.loads((tmp_path / "w" / "config.json").read_text())["model"] == "tiny"


def test_skipping_the_discriminator_before_its_start_changes_no_update():
    """The `lax.cond` that skips the discriminator before `disc_start` gives the updates of
    running it with zero factor, before and after the start (only its BatchNorm running
    statistics, read by no loss, stay put while it is skipped)."""
    config = load(CONFIG, ["--config.loss.disc_start=1"])
    vq_cfg = vqgan.vqgan_config(config)
    ae, disc = vqgan.init_autoencoder(config, vq_cfg), vqgan.init_discriminator(config)
    frozen, frozen_states = vqgan._frozen(None, None, ())
    # SGD (with momentum: optimizer state to compare) keeps updates linear in the gradients;
    # Adam's first steps are sign-like, so rounding in gradients near zero would flip them
    tx_ae = tx_disc = optax.sgd(1e-2, momentum=0.9)
    ae_g, disc_g, state = vqgan.init_state(ae, disc, tx_ae, tx_disc)
    weights = vqgan.loss_weights(config)
    steps = {
        run: jax.jit(
            vqgan.make_train_step(
                ae_g,
                disc_g,
                tx_ae,
                tx_disc,
                weights,
                frozen,
                vq_cfg.n_embed,
                run_disc_before_start=run,
            )
        )
        for run in (False, True)
    }
    rng = np.random.default_rng(0)
    states = {run: state for run in steps}
    for step in range(3):  # step 0 before the start, steps 1 and 2 after it
        x = jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
        out = {run: steps[run](states[run], {"image": x}, frozen_states) for run in steps}
        (skip_state, skip_m), (run_state, run_m) = out[False], out[True]
        for name in ("l1", "codebook_loss", "disc_factor", "loss"):
            np.testing.assert_allclose(skip_m[name], run_m[name], rtol=1e-5, atol=1e-7)
        for tree in ("ae", "disc", "opt_ae", "opt_disc"):
            a, b = getattr(skip_state, tree), getattr(run_state, tree)
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5, err_msg=f"{tree} @ {step}")
        if step == 0:
            assert float(skip_m["g_loss"]) == 0 and float(run_m["g_loss"]) != 0  # skipped
        else:
            assert float(skip_m["d_weight"]) > 0 and float(skip_m["disc_factor"]) == 1
            np.testing.assert_allclose(skip_m["d_loss"], run_m["d_loss"], rtol=1e-5)
        states = {run: out[run][0] for run in steps}
        # carry the same statistics so the later steps compare like with like
        states[False] = dataclasses.replace(states[False], disc_stats=states[True].disc_stats)


def test_grey_model_trains_against_the_channel_mean(tmp_path):
    """A grey VQ-GAN's losses compare its 1-channel reconstruction with the batch's channel mean,
    its discriminator takes one channel, and its samples show grey inputs over grey outputs."""
    from PIL import Image

    from llmcxr_jax.models import common
    from llmcxr_jax.models.discriminator import NLayerDiscriminator
    from llmcxr_jax.train.metric_writers import MetricWriter

    config = load(CONFIG, ["--config.loss.disc_start=0"])
    config.model_overrides.update({"in_channels": 1, "out_ch": 1})  # `tiny`, grey
    vq_cfg = vqgan.vqgan_config(config)
    assert (vq_cfg.in_channels, vq_cfg.out_ch) == (1, 1)
    disc = nnx.eval_shape(lambda: vqgan.init_discriminator(config))
    assert disc.main[0].kernel.shape[2] == 1 and disc.config.input_nc == 1
    rng = np.random.default_rng(1)  # random variables: much faster than the models' own init

    def random_model(cls, cfg):
        shapes = common.variables_of(common.abstract(cls, cfg))
        return common.with_variables(
            cls, cfg, jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
        )

    ae, disc = random_model(VQGAN, vq_cfg), random_model(NLayerDiscriminator, disc.config)
    frozen, frozen_states = vqgan._frozen(None, None, ())
    tx = optax.sgd(1e-3)
    ae_g, disc_g, state = vqgan.init_state(ae, disc, tx, tx)
    step = jax.jit(
        vqgan.make_train_step(
            ae_g, disc_g, tx, tx, vqgan.loss_weights(config), frozen, vq_cfg.n_embed
        )
    )
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)  # colour
    recon = np.asarray(jax.jit(lambda p, x: nnx.merge(ae_g, p)(x)[0])(state.ae, x))
    assert recon.shape == (4, 32, 32, 1)
    want = np.mean(np.abs(x.astype(np.float64).mean(-1, keepdims=True) - recon))
    new, m = step(state, {"image": jnp.asarray(x)}, frozen_states)
    np.testing.assert_allclose(float(m["l1"]), want, rtol=1e-5)
    # against the RGB batch the L1 would differ (the test can tell the targets apart)
    assert abs(np.mean(np.abs(x - recon)) - want) > 1e-3
    assert float(m["d_weight"]) > 0 and np.isfinite(float(m["loss"]))

    writer = MetricWriter(tmp_path, enable_tensorboard=False)
    vqgan._write_samples(tmp_path, 1, ae_g, new.ae, jnp.asarray(x), writer)
    writer.close()
    with Image.open(tmp_path / "samples" / "step_000001.png") as im:
        assert im.mode == "L" and im.size == (4 * 32 + 3 * 2, 2 * 32 + 2)


def test_restart_dead_codes_by_hand():
    codebook = jnp.asarray(np.arange(8, dtype=np.float32).reshape(4, 2))
    usage = jnp.asarray([0.0, 3.0, 0.2, 0.6])
    z = jnp.asarray(np.full((1, 3, 2), 100.0, np.float32) + np.arange(3)[None, :, None])
    book, new_usage, n = vqgan_step.restart_dead_codes(codebook, usage, z, jax.random.key(0), 0.5)
    book = np.asarray(book)
    assert int(n) == 2  # codes 0 and 2 are below 0.5
    np.testing.assert_array_equal(book[[1, 3]], np.asarray(codebook)[[1, 3]])  # live: unchanged
    rows = {tuple(r) for r in np.asarray(z).reshape(-1, 2)}
    assert tuple(book[0]) in rows and tuple(book[2]) in rows  # dead: an encoder output each
    np.testing.assert_allclose(np.asarray(new_usage), [1.0, 3.0, 1.0, 0.6], rtol=1e-6)


def test_train_step_restarts_the_codes_the_batch_left_unused():
    from llmcxr_jax.models import common
    from llmcxr_jax.models.discriminator import NLayerDiscriminator

    config = load(CONFIG, ["--config.loss.code_restart_below=0.5"])
    vq_cfg = vqgan.vqgan_config(config)
    rng = np.random.default_rng(2)

    def random_model(cls, cfg):
        shapes = common.variables_of(common.abstract(cls, cfg))
        return common.with_variables(
            cls, cfg, jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
        )

    disc_cfg = nnx.eval_shape(lambda: vqgan.init_discriminator(config)).config
    ae, disc = random_model(VQGAN, vq_cfg), random_model(NLayerDiscriminator, disc_cfg)
    frozen, frozen_states = vqgan._frozen(None, None, ())
    tx = optax.sgd(0.0)  # no update: only the restart changes the codebook
    ae_g, disc_g, state = vqgan.init_state(ae, disc, tx, tx)
    before = np.asarray(state.ae["quantize"]["embedding"]["embedding"][...])
    step = jax.jit(
        vqgan.make_train_step(
            ae_g, disc_g, tx, tx, vqgan.loss_weights(config), frozen, vq_cfg.n_embed
        )
    )
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    new, m = step(state, {"image": jnp.asarray(x)}, frozen_states)
    after = np.asarray(new.ae["quantize"]["embedding"]["embedding"][...])
    changed = np.any(after != before, axis=1)
    assert int(m["restarted_codes"]) == changed.sum() == vq_cfg.n_embed - int(m["codes_used"])
    z = jax.jit(lambda p, x: nnx.merge(ae_g, p).quant_conv(nnx.merge(ae_g, p).encoder(x)))(
        state.ae, jnp.asarray(x)
    )
    rows = np.asarray(z).reshape(-1, z.shape[-1])
    for r in after[changed][:5]:
        assert np.min(np.abs(rows - r).max(axis=1)) < 1e-5  # each is an encoder output
    assert np.all(np.asarray(new.code_usage)[changed] == 1.0)
