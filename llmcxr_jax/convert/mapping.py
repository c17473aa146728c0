"""Shared machinery of the weight converters: one table per model, serving both directions.

A converter is a tuple of `Rule`s. Each rule names a PyTorch state-dict key, the path of the
matching parameter in our (nnx pure-dict) parameter tree, and a `Transform`: a pair of inverse
functions between the PyTorch tensor and our array. A key containing "{i}" is a per-layer tensor
stacked on our parameter's leading axis.

`read_params` is strict: a missing tensor, a tensor of the wrong shape, or a tensor no rule asked
for raises `ConversionError` naming the key and the shapes. `torch_tensors` yields the state dict
of a parameter tree. Checkpoint files are read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import ml_dtypes
import numpy as np

from llmcxr_jax.errors import InputError

Fn = Callable[[Any, Any], Any]


class ConversionError(InputError):
    """Weights or configs that do not hold the model we expect."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """Inverse functions between one PyTorch tensor and our array; `ctx` is the model config."""

    to_jax: Fn
    to_torch: Fn


IDENTITY = Transform(lambda x, ctx: x, lambda x, ctx: x)
# nn.Linear weight [out, in] <-> kernel [in, out].
LINEAR = Transform(lambda w, ctx: w.T, lambda k, ctx: k.T)
# nn.Conv2d weight [out, in, kh, kw] (OIHW) <-> nnx.Conv kernel [kh, kw, in, out] (HWIO).
CONV = Transform(
    lambda w, ctx: w.transpose(2, 3, 1, 0),
    lambda k, ctx: k.transpose(3, 2, 0, 1),
)


@dataclasses.dataclass(frozen=True)
class Rule:
    key: str  # PyTorch key; "{i}" marks a per-layer tensor stacked on our leading axis
    path: tuple[str | int, ...]  # key path in our parameter tree (ints index nnx.List)
    transform: Transform = IDENTITY
    aliases: tuple[str, ...] = ()  # other PyTorch spellings accepted on import

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.key


class TensorSource(Protocol):
    """Read access to named tensors, wherever they are stored."""

    def names(self) -> list[str]: ...

    def __contains__(self, key: str) -> bool: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def get(self, key: str) -> np.ndarray: ...


class DictSource:
    """A TensorSource over an in-memory state dict (numpy arrays or torch tensors)."""

    def __init__(self, tensors: Mapping[str, Any]):
        self._t = dict(tensors)

    def names(self) -> list[str]:
        return list(self._t)

    def __contains__(self, key: str) -> bool:
        return key in self._t

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._t[key].shape)

    def get(self, key: str) -> np.ndarray:
        return to_numpy(self._t[key])


def to_numpy(t: Any) -> np.ndarray:
    """A numpy array of a torch tensor (floats as fp32, bf16 included) or an array."""
    if hasattr(t, "detach"):  # torch.Tensor, imported lazily by whoever made it
        t = t.detach().cpu()
        return t.float().numpy() if t.is_floating_point() else t.numpy()
    return np.asarray(t)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format; the legacy one is a bare pickle
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BLOCKED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


def torch_load(
    path: str | os.PathLike, *, mmap: bool = False, what: str = "PyTorch weights"
) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, memory-mapped when `mmap` and the file is
    in the zip format (a legacy `_use_new_zipfile_serialization=False` file is read whole: torch
    maps only zip files). Anything else than tensors and plain containers is refused, with a
    `ConversionError` of one line naming the file and, for a pickled object, the Python global
    it needed (`posix.system`, `__main__.MyModel`): nothing in the file is run."""
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"{path}: reading {what} needs torch (pip install 'llmcxr_jax[port]')"
        ) from e
    if not Path(path).is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as e:
        text = _ANSI.sub("", str(e))
        blocked = _BLOCKED_GLOBAL.search(text)
        if blocked:
            raise ConversionError(
                f"{path}: not a readable weights-only PyTorch file (it holds a pickled Python "
                f"object, {blocked.group(1)}, not only tensors; nothing in it was run); if it "
                "holds a pickled model you trust, load it once in PyTorch and "
                "torch.save(model.state_dict()) instead"
            ) from e
        detail = _UNPICKLER_ERROR.search(text)
        inner = e.__context__ if isinstance(e.__context__, pickle.UnpicklingError) else None
        first = str(inner) if inner else detail.group(1) if detail else _first_line(text)
        raise ConversionError(
            f"{path}: not a readable weights-only PyTorch file (not a PyTorch file, or damaged: "
            f"{first.strip()})"
        ) from e
    except Exception as e:
        first = _first_line(_ANSI.sub("", str(e)))
        raise ConversionError(
            f"{path}: not a readable weights-only PyTorch file (not a PyTorch file, or damaged: "
            f"{type(e).__name__}{': ' + first if first else ''})"
        ) from e


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def load_torch_state_dict(path: str | os.PathLike, *, key: str | None = "state_dict") -> dict:
    """A state dict from a `.pt`/`.pth`/`.ckpt` file, through `torch.load(weights_only=True)`.

    Lightning checkpoints keep the weights under `state_dict`; a plain state dict is returned as
    it is. A pickled whole model (`torch.save(model)`) is refused: save its `state_dict()`.
    """
    obj = torch_load(path)
    if isinstance(obj, dict) and key and isinstance(obj.get(key), dict):
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


# --------------------------------------------------------------------------------------------
# Parameter trees
# --------------------------------------------------------------------------------------------


def nested_get(tree: Mapping, path: tuple[Any, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def nested_set(tree: dict, path: tuple[Any, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def tree_shapes(params: Mapping) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path: shape} of every array in a nested-dict parameter tree (arrays or abstract)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path): tuple(a.shape)
        for path, a in flat
    }


def torch_shape(rule: Rule, ours: tuple[int, ...], ctx: Any) -> tuple[int, ...]:
    """The PyTorch shape a rule expects, derived from our shape through `to_torch` (no data)."""
    one = ours[1:] if rule.per_layer else ours
    out = jax.eval_shape(
        lambda x: rule.transform.to_torch(x, ctx), jax.ShapeDtypeStruct(one, np.float32)
    )
    return tuple(out.shape)


def np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


# --------------------------------------------------------------------------------------------
# Both directions
# --------------------------------------------------------------------------------------------


def read_params(
    rules: tuple[Rule, ...] | list[Rule],
    source: TensorSource,
    shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    ctx: Any = None,
    *,
    where: str,
    dtype: str = "float32",
    ignore: re.Pattern | None = None,
    progress: Callable[[Any], Any] = lambda it: it,
) -> dict[str, Any]:
    """Our parameter tree (numpy) from `source`, for a model whose parameters have `shapes`.

    `where` names the file or directory in every error; tensors matching `ignore` may be present
    without a rule (buffers, or parts of a checkpoint this model does not hold).
    """
    uncovered = set(shapes) - {r.path for r in rules}
    if uncovered:  # a model change the table does not know about
        raise ConversionError(f"mapping table has no rule for parameters {sorted(uncovered)}")
    out_dtype = np_dtype(dtype)
    used: set[str] = set()
    params: dict[str, Any] = {}

    def read(rule: Rule, i: int, shape: tuple[int, ...]) -> np.ndarray:
        names = [k.format(i=i) for k in (rule.key, *rule.aliases)]
        key = next((k for k in names if k in source), None)
        if key is None:
            raise ConversionError(f"{where}: missing tensor {names[0]} (expected shape {shape})")
        got = source.shape(key)
        if got != shape:
            raise ConversionError(f"{where}: tensor {key} has shape {got}, expected {shape}")
        used.add(key)
        return np.asarray(rule.transform.to_jax(source.get(key), ctx)).astype(out_dtype)

    for rule in progress(rules):
        ours = shapes[rule.path]
        expected = torch_shape(rule, ours, ctx)
        if rule.per_layer:
            value = np.empty(ours, out_dtype)
            for i in range(ours[0]):
                value[i] = read(rule, i, expected)
        else:
            value = read(rule, 0, expected)
        nested_set(params, rule.path, value)

    unexpected = sorted(
        k for k in source.names() if k not in used and not (ignore and ignore.search(k))
    )
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise ConversionError(
            f"{where}: unexpected tensors {unexpected[:5]}{more} "
            f"(shapes {[source.shape(k) for k in unexpected[:5]]})"
        )
    return params


def torch_tensors(
    rules: tuple[Rule, ...] | list[Rule],
    params: Mapping,
    ctx: Any = None,
    dtype: str = "float32",
) -> Iterator[tuple[str, np.ndarray]]:
    """(PyTorch key, tensor) pairs of a parameter tree, in table order."""
    out_dtype = np_dtype(dtype)
    for rule in rules:
        ours = np.asarray(jax.device_get(nested_get(params, rule.path)))
        if rule.per_layer:
            items = [(rule.key.format(i=i), ours[i]) for i in range(ours.shape[0])]
        else:
            items = [(rule.key, ours)]
        for key, x in items:
            t = np.asarray(rule.transform.to_torch(x, ctx)).astype(out_dtype)
            yield key, np.ascontiguousarray(t)
