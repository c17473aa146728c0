"""Hugging Face GPT-NeoX weights <-> our NNX parameters, both directions from one table.

`MAPPING` lists, for every parameter of `GPTNeoX`, its Hugging Face key and the pair of
functions that turn the HF tensor into ours and back. Per-layer HF tensors ("{i}" in the key)
stack on our leading `layers` axis. Import is strict: a missing tensor, a tensor of the wrong
shape or a tensor nobody asked for is an error naming the key and the shapes.

Reads: `model.safetensors`, sharded safetensors (`model.safetensors.index.json`),
`pytorch_model.bin` (through `torch.load(weights_only=True)`) and its sharded index; configs of
transformers 4.x (`rotary_pct`, `rotary_emb_base`) and 5.x (`rope_parameters`).
Writes: `config.json` (with both rotary spellings, so 4.x and 5.x load it) and safetensors that
`transformers.GPTNeoXForCausalLM.from_pretrained` loads; a resized vocabulary is written with its
true size (padding rows dropped).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llmcxr_jax.convert.mapping import (
    IDENTITY,
    ConversionError,
    Rule,
    Transform,
    read_params,
    to_numpy,
    torch_load,
    torch_tensors,
    tree_shapes,
)
from llmcxr_jax.models.gpt_neox import (
    GPTNeoX,
    GPTNeoXConfig,
    abstract_model,
    model_from_params,
    params_of,
)

ARCHITECTURE = "GPTNeoXForCausalLM"

# Keys some checkpoints carry that hold no parameters (buffers of old transformers versions).
IGNORED_KEYS = re.compile(
    r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$"
)


# --------------------------------------------------------------------------------------------
# The mapping table
# --------------------------------------------------------------------------------------------


def _pad_rows(x: np.ndarray, c: GPTNeoXConfig) -> np.ndarray:
    pad = c.padded_vocab_size - x.shape[0]
    return np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x


# [V, D] <-> [Vp, D]: padding rows added on import, dropped on export.
VOCAB_ROWS = Transform(_pad_rows, lambda x, c: x[: c.vocab_size])
# Our kernels keep HF's [out, in] orientation; only the head axes are split out.
# Fused QKV [3D, D], rows ordered (head, q/k/v, head_dim) <-> [H, 3, hd, D].
QKV_KERNEL = Transform(
    lambda w, c: w.reshape(c.num_heads, 3, c.head_dim, c.hidden_size),
    lambda k, c: k.reshape(3 * c.hidden_size, c.hidden_size),
)
QKV_BIAS = Transform(
    lambda b, c: b.reshape(c.num_heads, 3, c.head_dim),
    lambda b, c: b.reshape(3 * c.hidden_size),
)
# Attention output [D, D], input columns ordered (head, head_dim) <-> [D, H, hd].
OUT_KERNEL = Transform(
    lambda w, c: w.reshape(c.hidden_size, c.num_heads, c.head_dim),
    lambda k, c: k.reshape(c.hidden_size, c.hidden_size),
)


_L = "gpt_neox.layers.{i}."
_has_bias: Callable[[GPTNeoXConfig], bool] = lambda c: c.attention_bias
# Rules that exist only for some configs: {HF key: condition}.
CONDITIONAL = {
    _L + "attention.query_key_value.bias": _has_bias,
    _L + "attention.dense.bias": _has_bias,
}

MAPPING: tuple[Rule, ...] = (
    Rule("gpt_neox.embed_in.weight", ("embed_in",), VOCAB_ROWS),
    # Every released checkpoint and transformers 4.x say embed_out; 5.x renames it lm_head.
    Rule("embed_out.weight", ("embed_out",), VOCAB_ROWS, aliases=("lm_head.weight",)),
    Rule("gpt_neox.final_layer_norm.weight", ("final_layer_norm", "scale"), IDENTITY),
    Rule("gpt_neox.final_layer_norm.bias", ("final_layer_norm", "bias"), IDENTITY),
    Rule(_L + "input_layernorm.weight", ("layers", "input_layernorm", "scale"), IDENTITY),
    Rule(_L + "input_layernorm.bias", ("layers", "input_layernorm", "bias"), IDENTITY),
    Rule(
        _L + "post_attention_layernorm.weight",
        ("layers", "post_attention_layernorm", "scale"),
        IDENTITY,
    ),
    Rule(
        _L + "post_attention_layernorm.bias",
        ("layers", "post_attention_layernorm", "bias"),
        IDENTITY,
    ),
    Rule(
        _L + "attention.query_key_value.weight", ("layers", "attention", "qkv_kernel"), QKV_KERNEL
    ),
    Rule(
        _L + "attention.query_key_value.bias",
        ("layers", "attention", "qkv_bias"),
        QKV_BIAS,
    ),
    Rule(_L + "attention.dense.weight", ("layers", "attention", "out_kernel"), OUT_KERNEL),
    Rule(_L + "attention.dense.bias", ("layers", "attention", "out_bias"), IDENTITY),
    Rule(_L + "mlp.dense_h_to_4h.weight", ("layers", "mlp", "in_kernel"), IDENTITY),
    Rule(_L + "mlp.dense_h_to_4h.bias", ("layers", "mlp", "in_bias"), IDENTITY),
    Rule(_L + "mlp.dense_4h_to_h.weight", ("layers", "mlp", "out_kernel"), IDENTITY),
    Rule(_L + "mlp.dense_4h_to_h.bias", ("layers", "mlp", "out_bias"), IDENTITY),
)


def active_rules(config: GPTNeoXConfig) -> list[Rule]:
    return [r for r in MAPPING if CONDITIONAL.get(r.key, lambda c: True)(config)]


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def config_from_hf(
    hf: dict[str, Any], *, source: str = "config.json", **execution: Any
) -> GPTNeoXConfig:
    """Our config from a HF `config.json` dict (transformers 4.x or 5.x spelling)."""
    archs = hf.get("architectures") or []
    if hf.get("model_type") != "gpt_neox" or (archs and ARCHITECTURE not in archs):
        raise ConversionError(
            f"{source}: unknown architecture (model_type={hf.get('model_type')!r}, "
            f"architectures={archs}); only GPT-NeoX ({ARCHITECTURE}) is supported"
        )
    rope = hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default" or hf.get("rope_scaling"):
        raise ConversionError(
            f"{source}: rope type {rope_type!r} / rope_scaling "
            f"{hf.get('rope_scaling')!r} is not supported (default RoPE only)"
        )
    if hf.get("tie_word_embeddings", False):
        raise ConversionError(
            f"{source}: tie_word_embeddings=true; GPT-NeoX (and LLM-CXR) keep "
            "embed_in and embed_out separate"
        )
    try:
        return GPTNeoXConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=int(hf["num_attention_heads"]),
            intermediate_size=int(hf["intermediate_size"]),
            rotary_pct=float(rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))),
            rotary_base=float(rope.get("rope_theta", hf.get("rotary_emb_base", 10000.0))),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            use_parallel_residual=bool(hf.get("use_parallel_residual", True)),
            attention_bias=bool(hf.get("attention_bias", True)),
            hidden_act=str(hf.get("hidden_act", "gelu")),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            bos_token_id=int(hf.get("bos_token_id") or 0),
            eos_token_id=int(hf.get("eos_token_id") or 0),
            **execution,
        )
    except KeyError as e:
        raise ConversionError(f"{source}: missing field {e.args[0]!r}") from e


def config_to_hf(c: GPTNeoXConfig, dtype: str = "float32") -> dict[str, Any]:
    """A `config.json` that transformers 4.x and 5.x both read."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "gpt_neox",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "intermediate_size": c.intermediate_size,
        "hidden_act": c.hidden_act,
        "max_position_embeddings": c.max_position_embeddings,
        "layer_norm_eps": c.layer_norm_eps,
        "use_parallel_residual": c.use_parallel_residual,
        "attention_bias": c.attention_bias,
        "initializer_range": c.initializer_range,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "rotary_pct": c.rotary_pct,
        "rotary_emb_base": c.rotary_base,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": c.rotary_base,
            "partial_rotary_factor": c.rotary_pct,
        },
        "torch_dtype": dtype,
        "dtype": dtype,
    }


# --------------------------------------------------------------------------------------------
# Reading tensors
# --------------------------------------------------------------------------------------------


class TensorFiles:
    """Lazy access to the tensors of a HF directory, whichever file layout it uses."""

    def __init__(self, hf_dir: str | os.PathLike):
        self.dir = Path(hf_dir)
        self._where: dict[str, Path] = {}
        self._open: dict[Path, Any] = {}
        d = self.dir
        if (d / "model.safetensors.index.json").exists():
            self._index(d / "model.safetensors.index.json")
        elif (d / "model.safetensors").exists():
            self._add_safetensors(d / "model.safetensors")
        elif (d / "pytorch_model.bin.index.json").exists():
            self._index(d / "pytorch_model.bin.index.json")
        elif (d / "pytorch_model.bin").exists():
            self._add_torch(d / "pytorch_model.bin")
        else:
            raise ConversionError(
                f"{d}: no model.safetensors, model.safetensors.index.json, "
                "pytorch_model.bin or pytorch_model.bin.index.json"
            )

    def _index(self, index_file: Path) -> None:
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConversionError(f"{index_file}: not a weight index ({e})") from e
        for f in sorted(set(weight_map.values())):
            path = self.dir / f
            if not path.exists():
                raise ConversionError(f"{index_file} names {f}, which is missing")
            if f.endswith(".safetensors"):
                self._add_safetensors(path)
            else:
                self._add_torch(path)
        for key, f in weight_map.items():
            if self._where.get(key) != self.dir / f:
                raise ConversionError(f"{index_file}: tensor {key} is not in {f}")

    def _add_safetensors(self, path: Path) -> None:
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="numpy")
            keys = list(handle.keys())
        except Exception as e:
            raise ConversionError(f"{path}: unreadable safetensors file ({e})") from e
        self._open[path] = handle
        for k in keys:
            self._where[k] = path

    def _add_torch(self, path: Path) -> None:
        sd = torch_load(path, mmap=True, what=".bin weights")
        if not isinstance(sd, dict):
            raise ConversionError(f"{path}: holds a {type(sd).__name__}, not a state dict")
        self._open[path] = sd
        for k in sd:
            self._where[k] = path

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        h = self._open[self._where[key]]
        if isinstance(h, dict):
            return tuple(h[key].shape)
        return tuple(h.get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        h = self._open[self._where[key]]
        if isinstance(h, dict):  # torch state dict
            return to_numpy(h[key])
        try:
            return h.get_tensor(key)
        except Exception as e:
            raise ConversionError(f"{self._where[key]}: tensor {key} unreadable ({e})") from e


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def _our_shapes(config: GPTNeoXConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    return tree_shapes(params_of(abstract_model(config)))


def read_hf_config(hf_dir: str | os.PathLike, **execution: Any) -> GPTNeoXConfig:
    f = Path(hf_dir) / "config.json"
    if not f.exists():
        raise ConversionError(f"{hf_dir}: no config.json")
    try:
        hf = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{f}: unreadable JSON ({e})") from e
    return config_from_hf(hf, source=str(f), **execution)


def import_hf(
    hf_dir: str | os.PathLike,
    *,
    vocab_pad_multiple: int = 1,
    param_dtype: str = "float32",
    progress: bool = False,
) -> tuple[GPTNeoXConfig, dict[str, Any]]:
    """Read a HF GPT-NeoX directory into (config, parameter tree of numpy arrays)."""
    config = read_hf_config(hf_dir, param_dtype=param_dtype, vocab_pad_multiple=vocab_pad_multiple)
    params = read_params(
        active_rules(config),
        TensorFiles(hf_dir),
        _our_shapes(config),
        config,
        where=str(hf_dir),
        dtype=param_dtype,
        ignore=IGNORED_KEYS,
        progress=lambda rules: tqdm(rules, desc="import-hf", disable=not progress),
    )
    return config, params


def load_hf_model(hf_dir: str | os.PathLike, **kwargs: Any) -> GPTNeoX:
    """A `GPTNeoX` with the weights of a HF directory."""
    return model_from_params(*import_hf(hf_dir, **kwargs))


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def hf_tensors(
    config: GPTNeoXConfig, params: dict[str, Any], dtype: str = "float32"
) -> Iterator[tuple[str, np.ndarray]]:
    """(HF key, tensor) pairs for a parameter tree, in table order."""
    return torch_tensors(active_rules(config), params, config, dtype)


def export_hf(
    config: GPTNeoXConfig,
    params: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    max_shard_bytes: int = 2 << 30,
) -> Path:
    """Write `config.json` and (sharded where large) safetensors for transformers."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}  # transformers refuses safetensors without it
    written: list[tuple[Path, list[str]]] = []
    shard: dict[str, np.ndarray] = {}
    size = total = 0

    def flush() -> None:
        part = out / f".part-{len(written):05d}.safetensors"
        save_file(shard, str(part), metadata=meta)
        written.append((part, list(shard)))

    # Shards are written as they fill, so the whole model is never held twice in memory.
    for key, t in hf_tensors(config, params, dtype):
        if shard and size + t.nbytes > max_shard_bytes:
            flush()
            shard, size = {}, 0
        shard[key] = t
        size += t.nbytes
        total += t.nbytes
    flush()
    if len(written) == 1:
        written[0][0].replace(out / "model.safetensors")
    else:
        n = len(written)
        weight_map = {}
        for j, (part, keys) in enumerate(written, 1):
            name = f"model-{j:05d}-of-{n:05d}.safetensors"
            part.replace(out / name)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config_to_hf(config, dtype), indent=2))
    return out
