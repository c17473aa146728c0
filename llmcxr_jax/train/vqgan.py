"""VQ-GAN training: config -> models, loss networks and data -> the shared loop.

    llmcxr-jax train-vqgan --config configs/vqgan_demo.py --workdir run/vqgan

The step and its loss (taming's VQ-GAN + discriminator loss with LLM-CXR's clinical term) are
in `vqgan_step.py`; here the pieces are built from a config: the autoencoder (fresh, a model
checkpoint or a taming checkpoint), the discriminator, LPIPS and the CXR classifier of the
clinical loss (given weights, or trained on the data's labels with `classifier.py`). The run
itself is `loop.run`: resume, SIGTERM, checkpoints, metrics, and, once done, the VQ-GAN as a
model checkpoint in `workdir/model`.

Data parallel over the mesh: the batch is sharded on (`data`, `fsdp`), the state replicated;
XLA inserts the gradient all-reduce and BatchNorm sees the global batch.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from llmcxr_jax import checkpoint, sharding
from llmcxr_jax.data import image_batches, image_sources
from llmcxr_jax.errors import InputError
from llmcxr_jax.models import common
from llmcxr_jax.models.discriminator import DiscriminatorConfig, NLayerDiscriminator
from llmcxr_jax.models.vqgan import VQGAN, VQGANConfig, get_preset, to_channels
from llmcxr_jax.train import loop
from llmcxr_jax.train.vqgan_step import (
    Frozen,
    VQGANTrainState,
    init_state,
    loss_weights,
    make_train_step,
)

log = logging.getLogger(__name__)

Array = jax.Array

# --------------------------------------------------------------------------------------------
# Building the pieces from a config
# --------------------------------------------------------------------------------------------


def vqgan_config(config: ml_collections.ConfigDict) -> VQGANConfig:
    overrides = dict(config.get("model_overrides", {}) or {})
    for k in ("ch_mult", "attn_resolutions"):
        if k in overrides:
            overrides[k] = tuple(overrides[k])
    return get_preset(config.model, **overrides)


def init_autoencoder(config: ml_collections.ConfigDict, vq_cfg: VQGANConfig) -> VQGAN:
    init = config.get("init", ml_collections.ConfigDict())
    if init.get("checkpoint"):
        model = checkpoint.load_model(init.checkpoint, expect="vqgan")
        if model.config.replace(dtype=vq_cfg.dtype) != vq_cfg:
            raise InputError(f"{init.checkpoint}: its VQ-GAN config differs from config.model")
        return model
    if init.get("taming_ckpt"):
        from llmcxr_jax.convert import taming

        cfg, params, _ = taming.import_taming(init.taming_ckpt, init.taming_config)
        if cfg != vq_cfg.replace(dtype="float32"):
            raise InputError(f"{init.taming_config}: its VQ-GAN config differs from config.model")
        return common.with_variables(VQGAN, vq_cfg, params)
    return VQGAN(vq_cfg, rngs=nnx.Rngs(config.seed))


def init_discriminator(
    config: ml_collections.ConfigDict, vq_cfg: VQGANConfig | None = None
) -> NLayerDiscriminator:
    """A fresh PatchGAN, or taming's trained one when finetuning from a taming checkpoint.

    It judges the VQ-GAN's outputs, so its input channels are the VQ-GAN's `out_ch` (`vq_cfg`,
    by default `vqgan_config(config)`): one for a grey model.
    """
    vq_cfg = vq_cfg or vqgan_config(config)
    disc_cfg = DiscriminatorConfig(
        input_nc=vq_cfg.out_ch, ndf=config.loss.disc_ndf, n_layers=config.loss.disc_layers
    )
    disc = NLayerDiscriminator(disc_cfg, rngs=nnx.Rngs(config.seed + 1))
    ckpt = config.get("init", {}).get("taming_ckpt")
    if ckpt:
        from llmcxr_jax.convert import lpips as lpips_convert
        from llmcxr_jax.convert.mapping import load_torch_state_dict

        state = load_torch_state_dict(ckpt)
        if any(k.startswith(lpips_convert.TAMING_DISC_PREFIX) for k in state):
            tree = lpips_convert.import_discriminator(state, disc_cfg, where=str(ckpt))
            disc = common.with_variables(NLayerDiscriminator, disc_cfg, tree)
            log.info(f"discriminator: taming's from {ckpt}")
    return disc


def load_lpips(config: ml_collections.ConfigDict):
    """The LPIPS network from user-supplied weights (none are downloaded)."""
    from llmcxr_jax.convert import lpips as lpips_convert

    loss = config.loss
    if loss.perceptual_weight <= 0:
        return None
    if loss.get("perceptual_taming_ckpt"):
        return lpips_convert.import_lpips_from_taming(loss.perceptual_taming_ckpt)
    if loss.get("perceptual_vgg") and loss.get("perceptual_lin"):
        return lpips_convert.import_lpips(loss.perceptual_vgg, loss.perceptual_lin)
    raise InputError(
        "config.loss.perceptual_weight > 0 needs LPIPS weights: set "
        "config.loss.perceptual_taming_ckpt (a taming VQ-GAN .ckpt holds them), or "
        "config.loss.perceptual_vgg (torchvision vgg16 state dict) and config.loss.perceptual_lin "
        "(LPIPS vgg.pth); or set config.loss.perceptual_weight=0"
    )


def load_classifier(
    config: ml_collections.ConfigDict, source: Any, workdir: Path, *, progress: bool = True
):
    """The frozen CXR classifier for the clinical loss: given weights, or trained here."""
    if config.loss.clinical_weight <= 0:
        return None
    c = config.classifier
    if c.get("checkpoint"):
        return checkpoint.load_model(c.checkpoint, expect="densenet")
    if c.get("xrv_state_dict"):
        from llmcxr_jax.convert import torchxrayvision
        from llmcxr_jax.models import densenet

        return torchxrayvision.import_xrv(c.xrv_state_dict, densenet.get_preset(c.preset))
    from llmcxr_jax.train import classifier as train_classifier

    out = workdir / "classifier"
    if (out / checkpoint.CONFIG_FILE).exists():
        return checkpoint.load_model(out, expect="densenet")
    if not getattr(source, "num_labels", 0):
        raise InputError(
            "config.loss.clinical_weight > 0 needs a CXR classifier: set "
            "config.classifier.xrv_state_dict (torchxrayvision DenseNet-121 state dict) or "
            "config.classifier.checkpoint, or train on a labelled data set"
        )
    log.info(
        f"clinical loss: no classifier weights given; training one on {config.data.source}'s "
        f"{source.num_labels} labels ({c.train_steps} steps)"
    )
    model = train_classifier.train(
        c, source, seed=config.seed, progress=progress, mesh_shape=tuple(config.mesh)
    )
    checkpoint.save_model(out, model, overwrite=True)
    return model


def _frozen(lpips_model: Any, classifier: Any, feature_names: tuple[str, ...]):
    frozen_states: dict[str, Any] = {}
    lp = clf = None
    if lpips_model is not None:
        g, s = nnx.split(lpips_model)
        lp, frozen_states["lpips"] = (g, s), s
    if classifier is not None:  # DenseNet calls default to running statistics (eval)
        g, s = nnx.split(classifier)
        clf, frozen_states["classifier"] = (g, s, feature_names), s
    return Frozen(lpips=lp, classifier=clf), frozen_states


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, progress: bool = True
) -> dict[str, float]:
    """Train (or resume) a VQ-GAN in `workdir`; returns the last logged metrics.

    Writes `workdir/checkpoints/` (train state), `workdir/model/` (the VQ-GAN as a model
    checkpoint, for encode-images and generation), `metrics.jsonl`, TensorBoard events and
    `samples/step_XXXXXX.png` (inputs over reconstructions).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    mesh = sharding.make_mesh(tuple(config.mesh))
    vq_cfg = vqgan_config(config)
    source = image_sources.from_config(config.data, vq_cfg.resolution)

    ae = init_autoencoder(config, vq_cfg)
    disc = init_discriminator(config, vq_cfg)
    frozen, frozen_states = _frozen(
        load_lpips(config),
        load_classifier(config, source, workdir, progress=progress),
        tuple(config.loss.clinical_features),
    )
    tx_ae = optax.adam(config.optim.lr, b1=config.optim.b1, b2=config.optim.b2)
    tx_disc = optax.adam(config.optim.disc_lr, b1=config.optim.b1, b2=config.optim.b2)
    ae_graphdef, disc_graphdef, state = init_state(ae, disc, tx_ae, tx_disc)

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = sharding.logical_sharding(mesh, ("activation_batch",))
    state = jax.device_put(state, replicated)
    frozen_states = jax.device_put(frozen_states, replicated)
    step_fn = jax.jit(
        make_train_step(
            ae_graphdef, disc_graphdef, tx_ae, tx_disc, loss_weights(config), frozen, vq_cfg.n_embed
        ),
        in_shardings=(replicated, batch_sharding, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )

    batches = image_batches.ImageBatches(source, config.data, mesh)

    def log_window(window: list[loop.Metrics], at: loop.Progress):
        last = {k: float(v) for k, v in jax.device_get(window[-1]).items()}
        last["images_per_s"] = (
            (at.step - at.start) * config.data.batch_size / max(at.run_seconds, 1e-9)
        )
        last["skipped_images"] = float(batches.skipped)
        return last, {"l1": f"{last['l1']:.3f}", "ppl": f"{last['perplexity']:.0f}"}

    def export(state: VQGANTrainState) -> None:
        model = nnx.merge(ae_graphdef, jax.device_get(state.ae))
        checkpoint.save_model(workdir / "model", model, overwrite=True)

    _, last = loop.run(
        lambda state, batch, _: step_fn(state, batch, frozen_states),
        state,
        batches,
        loop.Schedule.from_config(config, config.steps),
        workdir=workdir,
        log=log_window,
        sample=lambda step, state, batch, writer: _write_samples(
            workdir, step, ae_graphdef, state.ae, batch["image"], writer
        ),
        export=export,
        tensorboard=config.get("tensorboard", True),
        progress=progress,
        desc="train-vqgan",
    )
    if batches.skipped:
        log.warning(
            f"train-vqgan: skipped {batches.skipped} unreadable images "
            f"(see {workdir}/skipped_images.jsonl)"
        )
    return last


def _write_samples(workdir: Path, step: int, graphdef, params, images: Array, writer) -> None:
    from llmcxr_jax.data.images import image_grid, save_grid

    x = jax.device_get(images)[:8]
    model = nnx.merge(graphdef, jax.device_get(params))
    recon = np.asarray(jax.jit(lambda m, x: m(x)[0])(model, jnp.asarray(x)))
    x = np.asarray(to_channels(jnp.asarray(x), recon.shape[-1]))  # as the losses see it
    both = np.concatenate([x, np.clip(recon, -1, 1)], axis=0)
    path = workdir / "samples" / f"step_{step:06d}.png"
    path.parent.mkdir(exist_ok=True)
    save_grid(both, path, ncols=len(x))
    writer.image(step, "inputs_over_reconstructions", image_grid(both, ncols=len(x)))


def summary(metrics: dict[str, float]) -> str:
    keys = (
        "l1",
        "perceptual",
        "clinical",
        "codebook_loss",
        "g_loss",
        "d_loss",
        "perplexity",
        "dead_codes",
    )
    return ", ".join(
        f"{k} {metrics[k]:.4g}" for k in keys if k in metrics and math.isfinite(metrics[k])
    )
