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
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from llmcxr_jax import distributed, sharding
from llmcxr_jax.errors import InputError, OutputExistsError
from llmcxr_jax.models import common

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
WORKDIR_MODEL = "model"  # where a training run (train, train-vqgan) saves its final model


class CheckpointError(InputError):
    """A checkpoint that is missing, truncated or does not match its config."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files are truncated or damaged (not one that merely does not match)."""


# TensorStore statuses that say nothing about the files' content: a full memory, a flaky
# network or missing permissions must not get a good checkpoint called damaged.
_NOT_DAMAGE = (
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "CANCELLED",
    "out of memory",
)
_TS_STATUS = re.compile(r"^[A-Z][A-Z_]+: ")
_TS_FILE = re.compile(r'(?:local file |at )"([^"]+)"')


def _chain(e: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def is_damage(e: BaseException) -> bool:
    """Whether an error raised while reading a checkpoint's files says they are damaged (and
    not that memory ran out, the network failed or access was denied)."""
    for x in _chain(e):
        if isinstance(x, MemoryError | PermissionError | ConnectionError | TimeoutError):
            return False
        if any(word in str(x) for word in _NOT_DAMAGE):
            return False
    return True


def damage_message(where: str | os.PathLike, e: BaseException) -> str:
    """One line for a checkpoint `where` that Orbax could not read: the file (when the error
    names one) and the reason, "truncated or damaged"; not the 60-line TensorStore spec that
    Orbax puts in its own message."""
    chain = _chain(e)
    # the TensorStore status ("DATA_LOSS: ...", "OUT_OF_RANGE: ...") says the most, then a JSON
    # or OS error (a metadata file); else the error raised
    pick = next(
        (x for x in chain if _TS_STATUS.match(str(x))),
        next((x for x in chain if isinstance(x, json.JSONDecodeError | OSError)), chain[0]),
    )
    text = (str(pick).strip().splitlines() or [""])[0]
    for cut in (" [tensorstore_spec", " [source locations", ". See full TensorStore details"):
        text = text.split(cut)[0]
    files = _TS_FILE.findall(text)
    if files:
        file = files[-1]
        reason = text.rsplit(f'"{file}": ', 1)[-1]
        root = str(where).rstrip("/") + "/"
        shown = file[len(root) :] if file.startswith(root) and file != root else file
        if len(reason) > 300:
            reason = reason[:300] + "..."
        return f"checkpoint {where}: file {shown} is truncated or damaged ({reason})"
    reason = text if _TS_STATUS.match(text) else f"{type(pick).__name__}: {text}"
    if len(reason) > 300:
        reason = reason[:300] + "..."
    json_errors = [x for x in chain if isinstance(x, json.JSONDecodeError)]
    bad = _bad_json_file(where, json_errors[0].doc) if json_errors else None
    if bad is not None:
        return f"checkpoint {where}: file {bad} is truncated or damaged ({reason})"
    return f"checkpoint {where} is truncated or damaged ({reason})"


_JSON_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata")


def _bad_json_file(where: str | os.PathLike, doc: str) -> str | None:
    """Which of Orbax's small JSON files under the local directory `where` holds `doc`, the
    text that did not parse (a JSON error from Orbax does not say which file it read); else the
    first of them that does not parse."""
    if is_remote(where) or not Path(where).is_dir():
        return None
    root = Path(where)
    candidates = sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and (f.name in _JSON_FILES or f.parent.name == "array_metadatas")
    )
    unparsed = []
    for f in candidates:
        try:
            if f.stat().st_size > 64 << 20:
                continue
            text = f.read_bytes().decode("utf-8", errors="replace")
            if text == doc:
                return str(f.relative_to(root))
            json.loads(text)
        except (OSError, ValueError):
            unparsed.append(str(f.relative_to(root)))
    return unparsed[0] if unparsed else None


def _key_name(path: tuple[Any, ...]) -> str:
    """A tree path as a name that does not depend on how Orbax stored the keys (ints as str)."""
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "/".join(str(p) for p in parts)


def stored_shapes(metadata: Any) -> dict[str, tuple[int, ...]] | None:
    """{parameter name: shape} of an Orbax tree's metadata (None when Orbax has none)."""
    tree = getattr(metadata, "tree", metadata)
    if tree is None:
        return None
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_key_name(path): tuple(getattr(leaf, "shape", ())) for path, leaf in flat}


def check_stored_shapes(
    where: str | os.PathLike, stored: dict[str, tuple[int, ...]] | None, target: Any, what: str
) -> None:
    """A `CheckpointError` naming the first entry that `target` (arrays or abstract arrays)
    and the checkpoint's `stored` shapes disagree on; `what` says what the target is."""
    if stored is None:
        return
    want = {
        _key_name(path): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]
    }
    for name, shape in want.items():
        if name not in stored:
            raise CheckpointError(f"{where}: has no entry {name}, which {what} needs")
        if stored[name] != shape:
            raise CheckpointError(
                f"{where}: entry {name} has shape {stored[name]}, {what} expects {shape}"
            )
    extra = sorted(set(stored) - set(want))
    if extra:
        raise CheckpointError(
            f"{where}: holds entries {what} does not have ({', '.join(extra[:3])}"
            f"{', ...' if len(extra) > 3 else ''})"
        )


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
    exists = (root / PARAMS_DIR).exists()
    distributed.barrier("llmcxr_save_params_looked")  # every host looks before any writes
    if exists and not overwrite:
        raise OutputExistsError(f"{root} already holds a checkpoint (pass overwrite to replace it)")
    root.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:  # every host writes its shards
        ckptr.save(root / PARAMS_DIR, params, save_args=layer_chunked(params), force=overwrite)
        ckptr.wait_until_finished()
    # The config is written last: its presence marks a complete checkpoint.
    if distributed.is_primary():
        meta = {"model_type": model_type, "config": config.to_dict()}
        (root / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    distributed.barrier("llmcxr_save_params_done")


LAYER_STACK = "layers"  # the top-level subtree whose leaves stack the decoder layers on axis 0


def layer_chunked(params: dict[str, Any]) -> dict[str, Any]:
    """Orbax save arguments storing every leaf of the layer stack one layer per chunk.

    Why: a reader that wants one layer (the int8 CPU engine quantising as it reads) can then
    decode one chunk instead of the whole stack; by default Orbax chunks a leaf only above its
    2 GiB file target, along its largest axis, so reading layer i of the 3.4 GB MLP kernel of a
    3B model meant decompressing all of it. Full restores read the same bytes either way.
    """

    def arg(path: tuple[Any, ...], leaf: Any) -> ocp.SaveArgs:
        stacked = _key_name(path[:1]) == LAYER_STACK and np.ndim(leaf) >= 1
        return ocp.SaveArgs(shard_axes=(0,) if stacked else ())

    return jax.tree_util.tree_map_with_path(arg, params)


def read_layers(path: str | os.PathLike, key_path: tuple[str, ...]) -> Iterator[np.ndarray] | None:
    """The layers of one stacked parameter of a model checkpoint, one at a time (numpy arrays
    in the stored dtype), when the checkpoint stores one chunk per layer (`layer_chunked`,
    local files); None otherwise (older or remote checkpoints: restore the leaf whole)."""
    import tensorstore as ts

    params_dir = Path(absolute(path)) / PARAMS_DIR
    if is_remote(path) or not params_dir.is_dir():
        return None
    name = ".".join(key_path)
    for driver in ("zarr", "zarr3"):  # Orbax writes zarr v2 unless told otherwise
        spec = {
            "driver": driver,
            "kvstore": {"driver": "ocdbt", "base": f"file://{params_dir}", "path": name},
            "recheck_cached_data": False,
            "recheck_cached_metadata": False,
        }
        try:
            arr = ts.open(spec, open=True, read=True).result()
        except Exception:  # not this driver (or not there: the whole-leaf restore says why)
            continue
        chunk = arr.chunk_layout.read_chunk.shape
        if arr.ndim == 0 or chunk[0] != 1:
            return None

        def layers(arr: Any = arr) -> Iterator[np.ndarray]:
            for i in range(arr.shape[0]):
                try:
                    yield np.asarray(arr[i].read().result())
                except Exception as e:
                    raise read_error(params_dir, e) from e

        return layers()
    return None


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
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: dev, abstract)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    params_dir = Path(absolute(path)) / PARAMS_DIR
    if not params_dir.is_dir():
        raise CheckpointError(f"{params_dir}: no such directory; the checkpoint is incomplete")
    with ocp.StandardCheckpointer() as ckptr:
        try:
            stored = stored_shapes(ckptr.metadata(params_dir).item_metadata)
        except Exception as e:
            raise read_error(params_dir, e) from e
        check_stored_shapes(params_dir, stored, target, "the config")
        try:
            restored = ckptr.restore(params_dir, target)
        except Exception as e:  # Orbax raises many types; one line naming the file
            raise read_error(params_dir, e) from e
    _check_shapes(params_dir, target, restored)
    return common.with_variables(kind.model_cls, config, restored)


def read_error(where: str | os.PathLike, e: BaseException) -> CheckpointError:
    """The one-line error for an Orbax read of the checkpoint `where` that raised `e`: damaged
    files (`DamagedCheckpointError`, naming the file), else why it could not be read."""
    if is_damage(e):
        return DamagedCheckpointError(damage_message(where, e))
    first = (str(e).strip().splitlines() or [""])[0]
    return CheckpointError(f"checkpoint {where}: cannot read ({type(e).__name__}: {first})")


def _check_shapes(where: Path, target: Any, restored: Any) -> None:
    flat_t = dict(jax.tree_util.tree_flatten_with_path(target)[0])
    for key, arr in jax.tree_util.tree_flatten_with_path(restored)[0]:
        want = flat_t.get(key)
        if want is None or tuple(want.shape) != tuple(np.shape(arr)):
            raise CheckpointError(
                f"{where}: parameter {jax.tree_util.keystr(key)} has shape {np.shape(arr)}, "
                f"config expects {None if want is None else tuple(want.shape)}"
            )
