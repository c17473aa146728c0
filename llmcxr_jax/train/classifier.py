"""Training the CXR classifier the clinical loss uses when no pretrained weights are given.

A DenseNet (the `tiny` preset for the demo, DenseNet-121 for real data) trained on the data
set's own labels with multi-label binary cross-entropy, inputs prepared exactly as for
torchxrayvision's models (`densenet.xrv_preprocess`), so a pretrained torchxrayvision DenseNet
and this one are interchangeable in the loss. BatchNorm uses batch statistics while training
and running statistics afterwards.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from llmcxr_jax import sharding
from llmcxr_jax.data.image_batches import ImageBatches
from llmcxr_jax.models import densenet
from llmcxr_jax.train import loop


def make_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, image_size: int):
    """The pure step `((params, stats, opt), batch) -> ((params, stats, opt), metrics)`."""

    def step(state: tuple[nnx.State, nnx.State, Any], batch: dict[str, jax.Array]):
        params, stats, opt = state

        def loss_fn(p: nnx.State, s: nnx.State):
            model = nnx.merge(graphdef, p, s)
            logits = model(densenet.xrv_preprocess(batch["image"], image_size), train=True)
            loss = optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean()
            acc = jnp.mean((logits > 0) == (batch["labels"] > 0.5))
            return loss, (nnx.state(model, nnx.BatchStat), acc)

        # BatchStats are mutated inside, so they must be traced at this level too: they are
        # differentiated as well (their gradient is zero and dropped).
        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        (loss, (new_stats, acc)), (grads, _) = grad_fn(params, stats)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        return (params, new_stats, opt), {"loss": loss, "acc": acc}

    return step


def train(
    c: ml_collections.ConfigDict,
    source: Any,
    *,
    seed: int = 0,
    progress: bool = True,
    mesh_shape: tuple[int, ...] = (1, 1, 1),
) -> densenet.DenseNet:
    """A DenseNet trained for `c.train_steps` steps on `source`'s images and labels.

    Data parallel over a mesh of `mesh_shape` (the VQ-GAN run's): the batch is sharded, the
    state replicated, BatchNorm sees the global batch."""
    cfg = densenet.get_preset(c.preset, num_classes=source.num_labels, in_channels=1)
    model = densenet.DenseNet(cfg, rngs=nnx.Rngs(seed))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optax.adam(c.lr)
    mesh = sharding.make_mesh(tuple(mesh_shape))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    params, stats = jax.device_put((params, stats), replicated)
    step_fn = jax.jit(
        make_step(graphdef, tx, cfg.image_size),
        in_shardings=(replicated, sharding.logical_sharding(mesh, ("activation_batch",))),
        out_shardings=replicated,
        donate_argnums=(0,),
    )
    data = ml_collections.ConfigDict(
        {"batch_size": c.batch_size, "seed": seed, "num_threads": c.get("num_threads", 4)}
    )
    batches = ImageBatches(source, data, mesh, keys=("image", "labels"))

    def log_window(window: list[loop.Metrics], at: loop.Progress):
        last = {k: float(v) for k, v in window[-1].items()}
        return last, {"loss": f"{last['loss']:.3f}", "acc": f"{last['acc']:.2f}"}

    (params, stats, _), _ = loop.run(
        lambda state, batch, _: step_fn(state, batch),
        (params, stats, tx.init(params)),
        batches,
        loop.Schedule(steps=c.train_steps),
        log=log_window,
        progress=progress,
        desc="train-classifier",
    )
    return nnx.merge(graphdef, *jax.device_get((params, stats)))
