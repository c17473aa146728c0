"""The pure LM train and eval steps: LLM-CXR's conditional autoregressive loss.

    train_step(state, batch, rng) -> (state, metrics)

The loss is the token-level mean of cross-entropy over the loss-masked targets of packed rows
(the masks come from the pipeline: response-only, LLM-CXR's released behaviour, or the whole
paragraph), computed from fp32 logits; an optional z-loss keeps the softmax normaliser near 1. With
`max_loss_fraction` the output projection and the cross-entropy run only at the loss-masked
positions (gathered into a fixed buffer); a batch with more masked targets than the buffer holds
takes the full path, so the loss is exact either way.
With `micro_batches > 1` the batch is split and gradients accumulated in a `lax.scan`; the mean
is still over all tokens of the batch (gradients of sums, divided once by the token count), so
accumulation gives exactly the un-split step. Parameters are fp32 masters; the model computes
in its configured dtype (bf16 on TPU). A step whose loss or gradient is not finite changes
nothing but the `skipped` counter.

Everything sharding-related is declared in `sharding.py`; `jit_train_step` builds the jitted
step with in/out shardings from there and a donated state. It is the one builder: `train`
(train/lm.py) runs it and `plan` (train/plan.py) compiles it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llmcxr_jax import sharding
from llmcxr_jax.errors import InputError

Array = jax.Array
P = jax.sharding.PartitionSpec
BATCH_AXES = ("activation_batch", None)  # logical axes of every [batch, length] input


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: Array  # int32 scalar
    params: nnx.State
    opt_state: Any
    skipped: Array  # int32: updates skipped for non-finite loss or gradients


@dataclasses.dataclass(frozen=True)
class LossConfig:
    z_loss: float = 0.0
    micro_batches: int = 1
    # > 0: logits only at the loss-masked positions, in a buffer of this fraction of the
    # (micro-)batch's positions. Why: with the response-only loss ~16% of the demo's positions
    # carry a target, and the output projection plus softmax of the other 84% is wasted work
    # (demo LM step 0.78 -> 0.68 s on 2 CPU cores). Batches that do not fit take the full path
    # (`loss_overflow` counts them). 0: every position (the TPU configs: the gather would
    # cross the sharded batch).
    max_loss_fraction: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.max_loss_fraction <= 1.0:
            raise InputError(f"max_loss_fraction {self.max_loss_fraction} must be in [0, 1]")
        if self.micro_batches < 1:
            raise InputError(f"micro_batches {self.micro_batches} must be >= 1")

    @classmethod
    def from_config(cls, loss: Any) -> LossConfig:
        """From a run config's `loss` block (z_loss, micro_batches, max_loss_fraction)."""
        return cls(
            z_loss=float(loss.get("z_loss", 0.0)),
            micro_batches=int(loss.get("micro_batches", 1)),
            max_loss_fraction=float(loss.get("max_loss_fraction", 0.0)),
        )


def init_state(params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        skipped=jnp.zeros((), jnp.int32),
    )


def _masked_sums(
    model: Any, hidden: Array, targets: Array, mask: Array, z_loss: float
) -> tuple[Array, dict[str, Array]]:
    """Loss sums over `hidden` [..., D] with `targets` [...] weighted by `mask` [...]."""
    logits = model.logits(hidden).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    total = jnp.sum(ce * mask)
    aux = {
        "ce_sum": total,
        "tokens": jnp.sum(mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == targets) * mask),
    }
    if z_loss:
        z = jnp.sum(jnp.square(jax.nn.logsumexp(logits, axis=-1)) * mask)
        total = total + z_loss * z
        aux["z_sum"] = z
    return total, aux


def loss_sums(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: dict[str, Array],
    z_loss: float,
    max_loss_fraction: float = 0.0,
) -> tuple[Array, dict[str, Array]]:
    """(sum of masked token losses, aux sums) for one (micro-)batch of packed rows."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"])
    targets, mask = batch["targets"], batch["loss_mask"].astype(jnp.float32)
    slots = math.ceil(max_loss_fraction * mask.size)
    if not max_loss_fraction or slots >= mask.size:
        return _masked_sums(model, hidden, targets, mask, z_loss)

    count = jnp.sum(mask != 0)

    def gathered(h: Array) -> tuple[Array, dict[str, Array]]:
        flat = mask.reshape(-1)
        (idx,) = jnp.nonzero(flat != 0, size=slots, fill_value=0)
        weight = jnp.where(jnp.arange(slots) < count, flat[idx], 0.0)  # unused slots: weight 0
        h = h.reshape(-1, h.shape[-1])[idx]
        return _masked_sums(model, h, targets.reshape(-1)[idx], weight, z_loss)

    def full(h: Array) -> tuple[Array, dict[str, Array]]:
        return _masked_sums(model, h, targets, mask, z_loss)

    total, aux = jax.lax.cond(count <= slots, gathered, full, hidden)
    aux["loss_overflow"] = (count > slots).astype(jnp.float32)
    return total, aux


def _split(batch: dict[str, Array], k: int) -> dict[str, Array]:
    def f(x: Array) -> Array:
        if x.shape[0] % k:
            raise InputError(f"batch {x.shape[0]} is not divisible into {k} micro-batches")
        return x.reshape(k, x.shape[0] // k, *x.shape[1:])

    return jax.tree.map(f, batch)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, cfg: LossConfig):
    grad_fn = jax.value_and_grad(
        lambda p, b: loss_sums(graphdef, p, b, cfg.z_loss, cfg.max_loss_fraction), has_aux=True
    )

    def train_step(
        state: TrainState, batch: dict[str, Array], rng: Array
    ) -> tuple[TrainState, dict[str, Array]]:
        del rng  # no dropout in GPT-NeoX finetuning; kept for the step's signature
        if cfg.micro_batches == 1:
            (_, aux), grads = grad_fn(state.params, batch)
        else:
            zeros = jax.tree.map(jnp.zeros_like, state.params)

            def body(carry, micro):
                g_acc, aux_acc = carry
                (_, aux), g = grad_fn(state.params, micro)
                g_acc = jax.tree.map(jnp.add, g_acc, g)
                aux_acc = jax.tree.map(jnp.add, aux_acc, aux)
                return (g_acc, aux_acc), None

            _, aux0 = jax.eval_shape(
                grad_fn,
                state.params,
                jax.tree.map(lambda x: x[0], _split(batch, cfg.micro_batches)),
            )[0]
            aux_zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux0)
            (grads, aux), _ = jax.lax.scan(
                body, (zeros, aux_zero), _split(batch, cfg.micro_batches)
            )
        n = jnp.maximum(aux["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / n, grads)
        loss = (aux["ce_sum"] + cfg.z_loss * aux.get("z_sum", 0.0)) / n
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = TrainState(
            step=state.step + 1,
            params=keep(new_params, state.params),
            opt_state=keep(new_opt, state.opt_state),
            skipped=state.skipped + (~finite).astype(jnp.int32),
        )
        metrics = {
            "loss": loss,
            "ce": aux["ce_sum"] / n,
            "accuracy": aux["correct"] / n,
            "tokens": aux["tokens"],
            "grad_norm": grad_norm,
            "skipped": new_state.skipped,
        }
        if "loss_overflow" in aux:  # micro-batches that took the full path
            metrics["loss_overflow"] = aux["loss_overflow"]
        return new_state, metrics

    return train_step


def state_specs(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """The PartitionSpecs of a train state (concrete or abstract): parameters and optimizer
    state by their logical axes, the counters replicated."""
    return TrainState(
        step=P(),
        skipped=P(),
        params=sharding.state_specs(state.params, mesh),
        opt_state=sharding.state_specs(state.opt_state, mesh),
    )


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """`state_specs` as NamedShardings on `mesh`."""
    return jax.tree.map(
        lambda s: jax.sharding.NamedSharding(mesh, s),
        state_specs(state, mesh),
        is_leaf=lambda x: isinstance(x, P),
    )


def jit_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    cfg: LossConfig,
    state_sh: TrainState,
    mesh: jax.sharding.Mesh,
) -> Any:
    """The jitted, sharded `train_step(state, batch, rng)`: the state sharded as `state_sh`
    (`state_shardings`) and donated, the batch on `BATCH_AXES`, rng and metrics replicated."""
    rep = jax.sharding.NamedSharding(mesh, P())
    return jax.jit(
        make_train_step(graphdef, tx, cfg),
        in_shardings=(state_sh, sharding.logical_sharding(mesh, BATCH_AXES), rep),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )


def make_eval_step(graphdef: nnx.GraphDef):
    def eval_step(params: nnx.State, batch: dict[str, Array]) -> dict[str, Array]:
        _, aux = loss_sums(graphdef, params, batch, 0.0)
        return aux  # sums: the caller divides after summing over batches

    return eval_step
