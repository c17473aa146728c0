"""The one place where parallelism is declared.

Models name the axes of every parameter and of the activations they constrain with logical
names ("embed", "heads", "activation_batch", ...). `LOGICAL_AXIS_RULES` maps each logical name to
mesh axes of a `Mesh` whose axes are `data` (pure data parallelism, parameters replicated),
`fsdp` (data parallelism with parameters and optimizer state sharded, ZeRO-3 style) and `tensor`
(Megatron-style model parallelism inside a layer). Changing the parallel layout of the whole
project means editing this table, nothing else.

Host-device set-up lives here too: `request_host_devices` must run before JAX starts, so this
module imports JAX only inside its functions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmcxr_jax.errors import InputError

if TYPE_CHECKING:
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (a tuple shards over several axes, None replicates).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("norm", None),
    ("layers", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # KV cache
    ("cache_batch_heads", ("data", "fsdp", "tensor")),  # batch-major merged axis
    ("cache_length", None),
    ("cache_kv", None),
)

# KVCache buffers: keys are stored transposed (see models/gpt_neox.py).
K_CACHE_AXES = ("cache_batch_heads", "cache_kv", "cache_length")
V_CACHE_AXES = ("cache_batch_heads", "cache_length", "cache_kv")


def request_host_devices(n: int, *, keep_users: bool = False) -> None:
    """Ask XLA for `n` CPU devices; only takes effect before JAX starts (else a no-op).

    With `keep_users`, a device count already in the user's XLA_FLAGS wins."""
    user_set = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and not (keep_users and user_set):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
        ).strip()


def make_mesh(shape: Sequence[int] | dict[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; `shape` may hold one -1 meaning "all remaining devices".

    Axes are Auto (GSPMD propagates shardings between the constraints we place).
    """
    import jax
    import numpy as np
    from jax.experimental import mesh_utils
    from jax.sharding import Mesh

    if isinstance(shape, dict):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise InputError(f"unknown mesh axes {sorted(unknown)}; axes are {MESH_AXES}")
        shape = [shape.get(a, 1) for a in MESH_AXES]
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise InputError(f"mesh shape {shape} must give sizes for {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    if shape.count(-1) > 1:
        raise InputError(f"mesh shape {shape}: at most one axis may be -1")
    if -1 in shape:
        rest = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % rest:
            raise InputError(f"{len(devices)} devices do not divide into mesh {shape}")
        shape[shape.index(-1)] = len(devices) // rest
    n = int(np.prod(shape))
    if n > len(devices):
        raise InputError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {n} devices, "
            f"have {len(devices)}"
        )
    if n == len(jax.devices()) and devices == list(jax.devices()):
        # Let JAX order devices for the physical topology (TPU ICI rings).
        device_array = mesh_utils.create_device_mesh(shape, devices)
    else:
        device_array = np.asarray(devices[:n]).reshape(shape)
    return Mesh(device_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry `logical_axes`.

    A mesh axis is used at most once per array (the first dimension that asks gets it), and with
    a mesh given, axes of size 1 are dropped so specs stay readable.
    """
    from jax.sharding import PartitionSpec

    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule in sharding.LOGICAL_AXIS_RULES")
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(
            a for a in axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1)
        )
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None]) -> NamedSharding:
    from jax.sharding import NamedSharding

    return NamedSharding(mesh, logical_to_spec(logical_axes, mesh=mesh))


def _is_var(x: Any) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Variable)


def state_specs(state: Any, mesh: Mesh | None = None) -> Any:
    """PartitionSpecs for an nnx State (or any tree of Variables) from their `logical_axes`."""
    import jax
    from jax.sharding import PartitionSpec

    def spec(v: Any) -> PartitionSpec:
        axes = v.get_metadata().get("logical_axes") if _is_var(v) else None
        if axes is None:
            return PartitionSpec()
        return logical_to_spec(axes, mesh=mesh)

    return jax.tree.map(spec, state, is_leaf=_is_var)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    import jax
    from jax.sharding import NamedSharding

    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state, mesh))


def shard_state(state: Any, mesh: Mesh) -> Any:
    """Place an nnx State on the mesh according to its logical axes."""
    import jax

    return jax.device_put(state, state_shardings(state, mesh))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names under the current mesh (no-op without one)."""
    import jax

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, mesh=mesh)
    return jax.lax.with_sharding_constraint(x, spec)
