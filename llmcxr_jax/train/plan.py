"""Will it fit? Compile the real-size train step for a mesh, without allocating anything.

    llmcxr-jax plan --config configs/llmcxr_stage1.py --mesh 1,4,1

The model, optimizer state and batch exist only as `ShapeDtypeStruct`s with their shardings; the
jitted train step is lowered and compiled for a mesh of fake devices (on any machine), and XLA's
memory analysis of the compiled SPMD program gives the bytes per device: arguments (parameters,
optimizer state, the batch), outputs and temporaries (activations kept for the backward pass,
gradients, workspace). Parameter and optimizer bytes are also computed by hand from the shapes
and shardings, as a check. The compile is for the host's backend (CPU here, TPU on a TPU VM),
so temporaries are an estimate of a TPU's: fusion and layouts differ between backends.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from llmcxr_jax import sharding
from llmcxr_jax.errors import InputError
from llmcxr_jax.models.gpt_neox import abstract_model, get_preset
from llmcxr_jax.train import lm_step, optim

GIB = 1024**3
TPU_V4_HBM_GIB = 32.0


@dataclasses.dataclass
class Plan:
    mesh: tuple[int, int, int]
    params_bytes: float  # per device, by hand
    opt_bytes: float  # per device, by hand
    batch_bytes: float
    argument_bytes: float  # XLA memory analysis, per device
    output_bytes: float
    temp_bytes: float
    alias_bytes: float
    flops: float  # per device per step (XLA cost analysis)
    compile_s: float

    @property
    def total_bytes(self) -> float:
        """Peak estimate: inputs + temporaries + outputs not aliased to (donated) inputs."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    def fits(self, hbm_gib: float = TPU_V4_HBM_GIB) -> bool:
        return self.total_bytes <= hbm_gib * GIB


def _bytes_per_device(tree: Any, specs: Any, mesh: jax.sharding.Mesh) -> float:
    """Sum over leaves of (leaf bytes / number of shards its spec splits it into)."""
    total = 0.0
    leaves = jax.tree.leaves(tree)
    spec_leaves = jax.tree.leaves(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    for leaf, spec in zip(leaves, spec_leaves, strict=True):
        shards = 1
        for axes in spec:
            for a in (axes,) if isinstance(axes, str) else (axes or ()):
                shards *= mesh.shape[a]
        total += np.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize / shards
    return float(total)


def plan(config: ml_collections.ConfigDict, mesh_shape: tuple[int, int, int]) -> Plan:
    """Lower and compile the train step of `config` for `mesh_shape` (needs that many devices)."""
    n = int(np.prod(mesh_shape))
    if n > len(jax.devices()):
        raise InputError(
            f"mesh {mesh_shape} needs {n} devices; start with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} (the CLI does)"
        )
    mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[:n])
    overrides = dict(config.get("model_overrides", {}) or {})
    vocab = config.get("plan_vocab_size", 0) or (
        config.tokenizer.get("text_vocab_size", 50281) + config.tokenizer.num_image_codes
    )
    cfg = get_preset(config.model, vocab_size=vocab, vocab_pad_multiple=128, **overrides)
    graphdef, params = nnx.split(abstract_model(cfg), nnx.Param)
    tx = optim.optimizer(config.optim)
    state = jax.eval_shape(lambda p: lm_step.init_state(p, tx), params)
    specs = lm_step.state_specs(state, mesh)
    state_sh = lm_step.state_shardings(state, mesh)
    b, t = config.data.batch_size, config.data.max_len
    batch_sh = sharding.logical_sharding(mesh, lm_step.BATCH_AXES)
    batch = {
        k: jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=batch_sh)
        for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions")
    }
    loss_cfg = lm_step.LossConfig.from_config(config.loss)
    step = lm_step.jit_train_step(graphdef, tx, loss_cfg, state_sh, mesh)  # what `train` runs
    t0 = time.time()
    with jax.set_mesh(mesh):
        compiled = step.lower(
            state, batch, jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
        ).compile()
    compile_s = time.time() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return Plan(
        mesh=tuple(mesh_shape),
        params_bytes=_bytes_per_device(state.params, specs.params, mesh),
        opt_bytes=_bytes_per_device(state.opt_state, specs.opt_state, mesh),
        batch_bytes=5 * b * t * 4 / (mesh.shape["data"] * mesh.shape["fsdp"]),
        argument_bytes=float(mem.argument_size_in_bytes),
        output_bytes=float(mem.output_size_in_bytes),
        temp_bytes=float(mem.temp_size_in_bytes),
        alias_bytes=float(mem.alias_size_in_bytes),
        flops=float((cost or {}).get("flops", 0.0)),
        compile_s=compile_s,
    )


def hand_bytes(
    config: ml_collections.ConfigDict, mesh_shape: tuple[int, int, int]
) -> tuple[float, float]:
    """Parameter and optimizer bytes per device by arithmetic: fp32 masters, and Adam's mu and
    nu (fp32 each), every tensor split over the mesh axes its logical axes name."""
    vocab = config.get("plan_vocab_size", 0) or (
        config.tokenizer.get("text_vocab_size", 50281) + config.tokenizer.num_image_codes
    )
    c = get_preset(config.model, vocab_size=vocab, vocab_pad_multiple=128)
    data, fsdp, tensor = mesh_shape
    L, D, F, V = c.num_layers, c.hidden_size, c.intermediate_size, c.padded_vocab_size
    both = fsdp * tensor
    sharded_both = 2 * V * D + L * (3 * D * D + D * D + 2 * D * F)  # embeddings, kernels
    by_tensor = L * (3 * D + F)  # qkv and mlp-in biases (heads / mlp axes)
    replicated = L * (D + D + 4 * D) + 2 * D  # out/mlp-out biases, layer norms
    params = 4 * (sharded_both / both + by_tensor / tensor + replicated)
    return params, 2 * params


def format_plan(plans: list[Plan], hbm_gib: float = TPU_V4_HBM_GIB) -> str:
    lines = [
        "| mesh (data, fsdp, tensor) | chips | params GiB | optimizer GiB | "
        "arguments GiB | temporaries GiB | peak GiB | TFLOP/step/chip | fits "
        f"{hbm_gib:.0f} GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        lines.append(
            f"| {p.mesh} | {math.prod(p.mesh)} | {p.params_bytes / GIB:.2f} | "
            f"{p.opt_bytes / GIB:.2f} | {p.argument_bytes / GIB:.2f} | "
            f"{p.temp_bytes / GIB:.2f} | {p.total_bytes / GIB:.2f} | {p.flops / 1e12:.1f} | "
            f"{'yes' if p.fits(hbm_gib) else 'no'} |"
        )
    return "\n".join(lines)
