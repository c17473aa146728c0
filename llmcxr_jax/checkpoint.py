"""Model checkpoints: variables in Orbax, the architecture beside them as JSON.

Layout of a model checkpoint directory:
    model_config.json   {"model_type": "gpt_neox" | "vqgan" | ..., "config": {...}}
    params/             Orbax PyTree checkpoint of the model's variables (nnx pure dict)

Every model kind of the project is listed in `KINDS`; the config's class says which it is.
Training checkpoints (optimizer state, step, data iterator) build on this in `train/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from llmcxr_jax import sharding
from llmcxr_jax.models import common

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
WORKDIR_MODEL = "model"  # where a training run (train, train-vqgan) saves its final model


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or does not match its config."""


@dataclasses.dataclass(frozen=True)
class Kind:
    config_cls: type
    model_cls: type
    execution_fields: tuple[str, ...]  # config fields a load may change


def kinds() -> dict[str, Kind]:
    from llmcxr_jax.models import densenet, gpt_neox, vqgan

    return {
        "gpt_neox": Kind(
            gpt_neox.GPTNeoXConfig, gpt_neox.GPTNeoX, gpt_neox.GPTNeoXConfig.EXECUTION_FIELDS
        ),
        "vqgan": Kind(vqgan.VQGANConfig, vqgan.VQGAN, ("dtype",)),
        "densenet": Kind(densenet.DenseNetConfig, densenet.DenseNet, ("dtype",)),
    }


def model_type_of(config: Any) -> str:
    for name, kind in kinds().items():
        if isinstance(config, kind.config_cls):
            return name
    raise TypeError(f"no checkpoint kind for config type {type(config).__name__}")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL such as `gs://bucket/run` (Orbax writes it through its own
    file system layer) rather than a local path."""
    return "://" in str(path)


def absolute(path: str | os.PathLike) -> str:
    """`path` as Orbax wants it: a local path made absolute, a URL (`gs://...`) unchanged."""
    p = str(path)
    return p if is_remote(p) else os.path.abspath(p)


def workdir_model(workdir: str | os.PathLike) -> Path | None:
    """The model checkpoint a finished training run wrote to `workdir/model`, or None."""
    model = Path(workdir) / WORKDIR_MODEL
    return model if (model / CONFIG_FILE).exists() else None


def model_dir(path: str | os.PathLike) -> Path:
    """A path given as "a model checkpoint, or a training workdir": the workdir's model
    (`path/model`) when it holds one, else `path` itself."""
    return workdir_model(path) or Path(path)


def save_params(
    path: str | os.PathLike,
    config: Any,
    params: dict[str, Any],
    *,
    overwrite: bool = False,
) -> None:
    """Write a model's variables (a pure dict of arrays) and `config` to the directory `path`."""
    model_type = model_type_of(config)
    root = Path(absolute(path))
    if (root / PARAMS_DIR).exists() and not overwrite:
        raise FileExistsError(f"{root} already holds a checkpoint (pass overwrite to replace it)")
    root.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(root / PARAMS_DIR, params, force=overwrite)
        ckptr.wait_until_finished()
    # The config is written last: its presence marks a complete checkpoint.
    meta = {"model_type": model_type, "config": config.to_dict()}
    (root / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def save_model(path: str | os.PathLike, model: nnx.Module, *, overwrite: bool = False) -> None:
    save_params(path, model.config, common.variables_of(model), overwrite=overwrite)


def load_config(path: str | os.PathLike, expect: str | None = None) -> Any:
    """The config stored in a checkpoint; `expect` names the model type the caller needs."""
    f = Path(absolute(path)) / CONFIG_FILE
    if not f.exists():
        raise CheckpointError(f"{path}: no {CONFIG_FILE}; not a model checkpoint, or incomplete")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: unreadable JSON ({e})") from e
    model_type = meta.get("model_type")
    known = kinds()
    if model_type not in known or (expect and model_type != expect):
        want = repr(expect) if expect else f"one of {sorted(known)}"
        raise CheckpointError(f"{f}: model_type {model_type!r}, expected {want}")
    try:
        return known[model_type].config_cls.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{f}: invalid {model_type} config ({e})") from e


def load_model(
    path: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    expect: str | None = "gpt_neox",
    **overrides: Any,
) -> Any:
    """Restore a model; `overrides` change execution options (dtype, scan_layers, ...).

    With a `mesh`, every variable is restored directly into its sharding (no host copy of the
    whole model). `expect` is the model type wanted (None accepts any).
    """
    config = load_config(path, expect)
    kind = kinds()[model_type_of(config)]
    bad = set(overrides) - set(kind.execution_fields)
    if bad:
        raise ValueError(f"only execution options can be overridden at load; got {sorted(bad)}")
    config = config.replace(**overrides)
    abstract_state = nnx.state(common.abstract(kind.model_cls, config))
    abstract = nnx.to_pure_dict(abstract_state)
    if mesh is not None:
        shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_state, mesh))
    else:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: dev, abstract)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    params_dir = Path(absolute(path)) / PARAMS_DIR
    try:
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore(params_dir, target)
    except Exception as e:  # orbax raises many types; name the file and keep the cause
        raise CheckpointError(f"{params_dir}: cannot restore parameters: {e}") from e
    _check_shapes(params_dir, target, restored)
    return common.with_variables(kind.model_cls, config, restored)


def _check_shapes(where: Path, target: Any, restored: Any) -> None:
    flat_t = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    for key, arr in jax.tree_util.tree_flatten_with_path(restored)[0]:
        want = flat_t.get(key)
        if want is None or tuple(want.shape) != tuple(np.shape(arr)):
            raise CheckpointError(
                f"{where}: parameter {jax.tree_util.keystr(key)} has shape {np.shape(arr)}, "
                f"config expects {None if want is None else tuple(want.shape)}"
            )
