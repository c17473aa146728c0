"""Loading `ml_collections` config files the big_vision way, without absl flags.

    llmcxr-jax train-vqgan --config configs/vqgan_demo.py:small --config.steps=500 ...

`--config FILE[:ARG]` imports FILE and calls its `get_config(ARG)`; each `--config.a.b=VALUE`
then overrides a field. Values are parsed with `ast.literal_eval` (numbers, tuples, booleans,
None) and fall back to the plain string; a type that does not match the field's is an error.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from llmcxr_jax.errors import InputError


class ConfigError(InputError):
    """A config file or override that cannot be applied."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path/to/file.py[:arg]` -> the ConfigDict its `get_config(arg)` returns."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such config file")
    mod_spec = importlib.util.spec_from_file_location(f"llmcxr_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(arg)")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    return config


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Apply `--config.a.b=value` (or `config.a.b=value`) strings in place."""
    for item in overrides:
        key, eq, value = item.lstrip("-").partition("=")
        if not eq or not key.startswith("config."):
            raise ConfigError(f"override {item!r} is not of the form --config.key=value")
        *parents, leaf = key[len("config.") :].split(".")
        node = config
        for p in parents:
            if p not in node:
                raise ConfigError(f"override {item!r}: no config field {p!r}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"override {item!r}: no config field {leaf!r} (fields: {list(node)})")
        old = node[leaf]
        new = _parse_value(value)
        if isinstance(old, tuple) and isinstance(new, list):
            new = tuple(new)
        if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
            new = float(new)
        if old is not None and new is not None and not isinstance(new, type(old)):
            if isinstance(old, str):
                new = value  # e.g. --config.data.source=123 meant as text
            else:
                raise ConfigError(
                    f"override {item!r}: field is {type(old).__name__}, got {type(new).__name__}"
                )
        node[leaf] = new


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    config = load_config_file(os.path.expanduser(spec))
    apply_overrides(config, overrides)
    return config
