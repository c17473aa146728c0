"""What every model of the project shares: building without allocating, and variable trees.

A model's variables (parameters, and BatchNorm statistics where a model has them) travel as a
plain nested dict of arrays (`nnx.to_pure_dict`): that is what checkpoints and converters hold.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from llmcxr_jax.errors import InputError

M = TypeVar("M", bound=nnx.Module)


def check_fields(config_cls: type, fields: Any, what: str) -> None:
    """Refuse config field names `config_cls` does not have (e.g. a misspelt
    `--config.model_overrides.x`) with an InputError naming them, not a TypeError."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InputError(f"unknown {what} config fields {unknown}; known: {sorted(known)}")


def abstract(model_cls: type[M], config: Any) -> M:
    """The model with ShapeDtypeStructs for variables: nothing is allocated."""
    return nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0)))


def variables_of(model: nnx.Module) -> dict[str, Any]:
    """All variables of a model as a nested dict of arrays (list indices as int keys)."""
    return nnx.to_pure_dict(nnx.state(model))


def with_variables(model_cls: type[M], config: Any, tree: dict[str, Any]) -> M:
    """A model of `config` holding `tree` (shaped like `variables_of`'s result)."""
    model = abstract(model_cls, config)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, tree))
    nnx.update(model, state)
    return model
