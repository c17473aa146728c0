"""Model checkpoints: parameters in Orbax, the architecture beside them as JSON.

Layout of a model checkpoint directory:
    model_config.json   {"model_type": "gpt_neox", "config": {...GPTNeoXConfig...}}
    params/             Orbax PyTree checkpoint of the parameter tree (nnx pure dict)

Training checkpoints (optimizer state, step, data iterator) build on this in `train/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from llmcxr_jax import sharding
from llmcxr_jax.models.gpt_neox import (
    GPTNeoX,
    GPTNeoXConfig,
    abstract_model,
    model_from_params,
    params_of,
)

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or does not match its config."""


def _abs(path: str | os.PathLike) -> str:
    p = str(path)
    return p if "://" in p else os.path.abspath(p)


def save_params(
    path: str | os.PathLike,
    config: GPTNeoXConfig,
    params: dict[str, Any],
    *,
    overwrite: bool = False,
) -> None:
    """Write `params` (a pure dict of arrays) and `config` to the directory `path`."""
    root = Path(_abs(path))
    if (root / PARAMS_DIR).exists() and not overwrite:
        raise FileExistsError(f"{root} already holds a checkpoint (pass overwrite to replace it)")
    root.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(root / PARAMS_DIR, params, force=overwrite)
        ckptr.wait_until_finished()
    # The config is written last: its presence marks a complete checkpoint.
    meta = {"model_type": "gpt_neox", "config": config.to_dict()}
    (root / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def save_model(path: str | os.PathLike, model: GPTNeoX, *, overwrite: bool = False) -> None:
    save_params(path, model.config, params_of(model), overwrite=overwrite)


def load_config(path: str | os.PathLike) -> GPTNeoXConfig:
    f = Path(_abs(path)) / CONFIG_FILE
    if not f.exists():
        raise CheckpointError(f"{path}: no {CONFIG_FILE}; not a model checkpoint, or incomplete")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: unreadable JSON ({e})") from e
    if meta.get("model_type") != "gpt_neox":
        raise CheckpointError(f"{f}: model_type {meta.get('model_type')!r}, expected 'gpt_neox'")
    return GPTNeoXConfig.from_dict(meta["config"])


def load_model(
    path: str | os.PathLike, *, mesh: jax.sharding.Mesh | None = None, **overrides: Any
) -> GPTNeoX:
    """Restore a model; `overrides` change execution options (dtype, scan_layers, remat_policy).

    With a `mesh`, every parameter is restored directly into its sharding (no host copy of the
    whole model).
    """
    config = load_config(path)
    bad = set(overrides) - set(GPTNeoXConfig.EXECUTION_FIELDS)
    if bad:
        raise ValueError(f"only execution options can be overridden at load; got {sorted(bad)}")
    config = config.replace(**overrides)
    abstract_state = nnx.state(abstract_model(config), nnx.Param)
    abstract = nnx.to_pure_dict(abstract_state)
    if mesh is not None:
        shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_state, mesh))
    else:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: dev, abstract)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    params_dir = Path(_abs(path)) / PARAMS_DIR
    try:
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(params_dir, target)
    except Exception as e:  # orbax raises many types; name the file and keep the cause
        raise CheckpointError(f"{params_dir}: cannot restore parameters: {e}") from e
    _check_shapes(params_dir, target, restored)
    return model_from_params(config, restored)


def _check_shapes(where: Path, target: Any, restored: Any) -> None:
    flat_t = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    for key, arr in jax.tree_util.tree_flatten_with_path(restored)[0]:
        want = flat_t.get(key)
        if want is None or tuple(want.shape) != tuple(np.shape(arr)):
            raise CheckpointError(
                f"{where}: parameter {jax.tree_util.keystr(key)} has shape {np.shape(arr)}, "
                f"config expects {None if want is None else tuple(want.shape)}"
            )
