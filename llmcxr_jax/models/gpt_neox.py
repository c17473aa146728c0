"""GPT-NeoX in Flax NNX, computing exactly what Hugging Face's `GPTNeoXForCausalLM` computes.

Layout choices, each for a reason:
- Layer parameters are stacked on a leading `layers` axis whatever `scan_layers` says, so a
  checkpoint does not depend on how the forward pass is compiled; `scan_layers=True` runs the
  stack with `lax.scan` (32 layers compile in the time of one), `False` unrolls it (faster
  decoding on CPU).
- Every kernel keeps Hugging Face's [out, in] orientation (reshaped, never transposed): the
  fused QKV is [heads, 3, head_dim, embed] because HF's `query_key_value.weight` [3*D, D] is laid
  out per head (q, k, v interleaved per head). Converting is then pure reshaping, heads shard
  over the `tensor` axis directly, and on CPU the skinny decode matmuls run about 2x faster with
  the contraction over the contiguous axis (on TPU, XLA picks layouts itself).
- Every parameter carries `logical_axes` metadata; `sharding.py` maps the names to mesh axes.
- Inputs are packed rows: `segment_ids` (0 = padding) restrict attention to one segment and
  `positions` restart per segment, so a packed row equals its segments run separately.
- The KV cache is a pytree of stacked arrays updated with `lax.dynamic_update_slice`; `decode.py`
  drives it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from llmcxr_jax import sharding
from llmcxr_jax.errors import InputError, positive_int
from llmcxr_jax.models import common

Array = jax.Array

# A finite stand-in for -inf: a fully masked attention row then becomes uniform instead of NaN,
# and masked vocabulary columns get exactly zero probability in fp32 softmax.
NEG_INF = -1e30

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

# the size fields of GPTNeoXConfig: each must be a positive integer
_COUNT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "vocab_pad_multiple",
)

_REMAT_POLICIES: dict[str, Any] = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "qkv_mlp": jax.checkpoint_policies.save_only_these_names("qkv", "mlp_hidden"),
}


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig:
    """Architecture plus execution options (dtypes, scan, remat) of a GPT-NeoX model.

    `vocab_size` is the true vocabulary; the embedding tables have `padded_vocab_size` rows
    (a multiple of `vocab_pad_multiple`, 128 for TPU tiles) and the extra rows can never be
    produced: their logits are masked.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    rotary_pct: float = 0.25
    rotary_base: float = 10000.0
    max_position_embeddings: int = 2048
    layer_norm_eps: float = 1e-5
    use_parallel_residual: bool = True
    attention_bias: bool = True
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    bos_token_id: int = 0
    eos_token_id: int = 0
    vocab_pad_multiple: int = 1
    # Execution options: not part of the architecture, free to change between runs.
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    # > 0: without a cache, queries go in blocks of this many rows, each attending only to the
    # keys up to its end (the blocks above the causal diagonal are never computed): 35% off the
    # attention at 256 tokens in blocks of 64 on a CPU. 0: one block.
    attention_block: int = 0

    EXECUTION_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_block")

    def __post_init__(self):
        # counts first: a 0 or "four" here would otherwise divide by zero further down
        for name in _COUNT_FIELDS:
            positive_int(getattr(self, name), name)
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise InputError(
                f"unknown hidden_act {self.hidden_act!r}; known: {sorted(_ACTIVATIONS)}"
            )
        if self.remat_policy != "none" and self.remat_policy not in _REMAT_POLICIES:
            raise InputError(
                f"unknown remat_policy {self.remat_policy!r}; "
                f"known: none, {', '.join(_REMAT_POLICIES)}"
            )
        if self.attention_block < 0:
            raise InputError(f"attention_block {self.attention_block} must be >= 0 (0: one block)")
        if self.rotary_dim % 2:
            raise InputError(f"rotary dims {self.rotary_dim} must be even")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        # Same truncation as transformers: int(head_dim * partial_rotary_factor).
        return int(self.head_dim * self.rotary_pct)

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m

    def replace(self, **changes: Any) -> GPTNeoXConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTNeoXConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown GPT-NeoX config fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def num_params(self, *, padded: bool = False) -> int:
        """Parameter count by hand (the test checks it against the model's arrays)."""
        d, f, n = self.hidden_size, self.intermediate_size, self.num_layers
        v = self.padded_vocab_size if padded else self.vocab_size
        b = 1 if self.attention_bias else 0
        attn = d * 3 * d + b * 3 * d + d * d + b * d
        mlp = d * f + f + f * d + d
        norms = 4 * d
        return 2 * v * d + n * (attn + mlp + norms) + 2 * d


# The released model LLM-CXR starts from, and small ones for tests and the demo.
PRESETS: dict[str, GPTNeoXConfig] = {
    "dolly-v2-3b": GPTNeoXConfig(
        vocab_size=50280,
        hidden_size=2560,
        num_layers=32,
        num_heads=32,
        intermediate_size=10240,
        rotary_pct=0.25,
        rotary_base=10000.0,
        max_position_embeddings=2048,
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
    ),
    "pythia-70m": GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=512,
        num_layers=6,
        num_heads=8,
        intermediate_size=2048,
    ),
    # The decode benchmark's model: pythia-70m's shape with LLM-CXR's vocabulary.
    "bench-6l-512": GPTNeoXConfig(
        vocab_size=51305,
        hidden_size=512,
        num_layers=6,
        num_heads=8,
        intermediate_size=2048,
    ),
    # The demo's LM (vocabulary set from its tokenizer): trains on 2 CPU cores in minutes.
    "demo": GPTNeoXConfig(
        vocab_size=4096,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        intermediate_size=1024,
        rotary_pct=0.25,
        max_position_embeddings=1024,
    ),
    "tiny": GPTNeoXConfig(
        vocab_size=256,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,
        max_position_embeddings=512,
    ),
}


def get_preset(name: str, **overrides: Any) -> GPTNeoXConfig:
    if name not in PRESETS:
        raise InputError(f"unknown GPT-NeoX preset {name!r}; known: {sorted(PRESETS)}")
    common.check_fields(GPTNeoXConfig, overrides, "GPT-NeoX")
    return PRESETS[name].replace(**overrides)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _param(
    key: Array,
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    dtype,
    *,
    init: str,
    stddev: float = 0.02,
) -> nnx.Param:
    if init == "normal":
        value = stddev * jax.random.normal(key, shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        raise ValueError(init)
    assert len(axes) == len(shape), (axes, shape)
    return nnx.Param(value, logical_axes=axes)


class LayerNorm(nnx.Module):
    """LayerNorm parameters; with `num_layers`, stacked on a leading layers axis."""

    def __init__(self, dim: int, dtype, num_layers: int | None = None):
        lead = () if num_layers is None else (num_layers,)
        lead_axes = () if num_layers is None else ("layers",)
        self.scale = _param(None, (*lead, dim), (*lead_axes, "norm"), dtype, init="ones")
        self.bias = _param(None, (*lead, dim), (*lead_axes, "norm"), dtype, init="zeros")


class Attention(nnx.Module):
    def __init__(self, cfg: GPTNeoXConfig, rngs: nnx.Rngs, dtype):
        L, D, H, hd = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.head_dim
        std = cfg.initializer_range
        self.qkv_kernel = _param(
            rngs.params(),
            (L, H, 3, hd, D),
            ("layers", "heads", "qkv", "head_dim", "embed"),
            dtype,
            init="normal",
            stddev=std,
        )
        self.out_kernel = _param(
            rngs.params(),
            (L, D, H, hd),
            ("layers", "embed", "heads", "head_dim"),
            dtype,
            init="normal",
            stddev=std,
        )
        if cfg.attention_bias:
            self.qkv_bias = _param(
                None, (L, H, 3, hd), ("layers", "heads", "qkv", "head_dim"), dtype, init="zeros"
            )
            self.out_bias = _param(None, (L, D), ("layers", "norm"), dtype, init="zeros")


class MLP(nnx.Module):
    def __init__(self, cfg: GPTNeoXConfig, rngs: nnx.Rngs, dtype):
        L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
        std = cfg.initializer_range
        self.in_kernel = _param(
            rngs.params(), (L, F, D), ("layers", "mlp", "embed"), dtype, init="normal", stddev=std
        )
        self.in_bias = _param(None, (L, F), ("layers", "mlp"), dtype, init="zeros")
        self.out_kernel = _param(
            rngs.params(), (L, D, F), ("layers", "embed", "mlp"), dtype, init="normal", stddev=std
        )
        self.out_bias = _param(None, (L, D), ("layers", "norm"), dtype, init="zeros")


class DecoderLayers(nnx.Module):
    """All decoder layers, each parameter stacked on a leading `layers` axis."""

    def __init__(self, cfg: GPTNeoXConfig, rngs: nnx.Rngs, dtype):
        self.input_layernorm = LayerNorm(cfg.hidden_size, dtype, cfg.num_layers)
        self.post_attention_layernorm = LayerNorm(cfg.hidden_size, dtype, cfg.num_layers)
        self.attention = Attention(cfg, rngs, dtype)
        self.mlp = MLP(cfg, rngs, dtype)


# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys [batch*heads, head_dim, max_len] and values [batch*heads, max_len, head_dim], one
    buffer per layer.

    The layout is what makes decoding fast on XLA CPU (measured in benchmarks/decode.py):
    - separate per-layer buffers, not one stacked array: each is updated in place and read by
      the attention dot without slicing copies;
    - batch and heads share one leading axis (batch-major): with a size-1 batch, a
      [1, H, S, hd] buffer makes XLA duplicate the in-place update into two fusions and copy the
      whole cache at every step;
    - keys stored transposed, so q.k and p.v are both plain batched matmuls.
    `segment_ids` marks written slots (0 = empty or padding); `index` is the next slot to write,
    shared by all rows (prompts are left-aligned first, see decode.py).
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    segment_ids: Array
    index: Array

    @classmethod
    def zeros(cls, cfg: GPTNeoXConfig, batch: int, max_len: int) -> KVCache:
        n, hd = batch * cfg.num_heads, cfg.head_dim
        dt = jnp.dtype(cfg.dtype)
        return cls(
            k=tuple(jnp.zeros((n, hd, max_len), dt) for _ in range(cfg.num_layers)),
            v=tuple(jnp.zeros((n, max_len, hd), dt) for _ in range(cfg.num_layers)),
            segment_ids=jnp.zeros((batch, max_len), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.segment_ids.shape[1]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class GPTNeoX(nnx.Module):
    """GPT-NeoX causal LM with untied input and output embeddings."""

    def __init__(self, config: GPTNeoXConfig, *, rngs: nnx.Rngs):
        self.config = config
        pdt = jnp.dtype(config.param_dtype)
        V, D = config.padded_vocab_size, config.hidden_size
        std = config.initializer_range
        self.embed_in = _param(
            rngs.params(), (V, D), ("vocab", "embed"), pdt, init="normal", stddev=std
        )
        self.layers = DecoderLayers(config, rngs, pdt)
        self.final_layer_norm = LayerNorm(D, pdt)
        # Vocab-major like embed_in (and like HF's weight): logits contract over the contiguous
        # axis, which makes the skinny decode matmul about 2x faster on CPU.
        self.embed_out = _param(
            rngs.params(), (V, D), ("vocab", "embed"), pdt, init="normal", stddev=std
        )

    # -- public API ---------------------------------------------------------------------------

    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Logits [B, T, padded_vocab] in fp32 (padding columns masked) and the updated cache."""
        hidden, cache = self.hidden_states(tokens, positions, segment_ids, cache)
        return self.logits(hidden), cache

    def hidden_states(
        self,
        tokens: Array,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        cache: KVCache | None = None,
        layers: Sequence[dict[str, Array]] | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Final-LayerNormed hidden states [B, T, D] in the compute dtype.

        `layers` (from `unstack_layers`) are per-layer parameter buffers: a decoding loop passes
        them so the stacked weights are sliced once per generation, not once per token.
        """
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        B, T = tokens.shape
        if positions is None:
            start = 0 if cache is None else cache.index
            positions = jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))
        if segment_ids is None:
            segment_ids = jnp.ones((B, T), jnp.int32)

        x = jnp.take(self.embed_in[...], tokens, axis=0).astype(dt)
        x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        rope = _rotary_tables(positions, cfg)

        if cache is None:
            q_slots = jnp.arange(T, dtype=jnp.int32)
            k_slots, k_segments = q_slots, segment_ids
        else:
            q_slots = cache.index + jnp.arange(T, dtype=jnp.int32)
            k_slots = jnp.arange(cache.max_len, dtype=jnp.int32)
            k_segments = jax.lax.dynamic_update_slice(
                cache.segment_ids, segment_ids, (0, cache.index)
            )
        mask = _attention_mask(segment_ids, k_segments, q_slots, k_slots)

        layer_params = _layer_arrays(self.layers) if layers is None else layers
        x, cache_kv = _run_layers(cfg, layer_params, x, rope, mask, cache)
        if cache is not None:
            cache = KVCache(
                k=cache_kv[0], v=cache_kv[1], segment_ids=k_segments, index=cache.index + T
            )
        ln = self.final_layer_norm
        x = _layer_norm(x, ln.scale[...], ln.bias[...], cfg.layer_norm_eps, dt)
        return x, cache

    def unstack_layers(self) -> tuple[dict[str, Array], ...]:
        """Each layer's parameters as its own buffers (one copy of the layer weights)."""
        stacked = _layer_arrays(self.layers)
        return tuple(
            jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(self.config.num_layers)
        )

    def layer_views(self) -> tuple[dict[str, Array], ...] | None:
        """Each layer's parameters as views of the stacked buffers (no copy), or None.

        Why: a decoding loop wants a buffer per layer (slicing the stack inside the loop copies
        a layer per token), but `unstack_layers` holds every weight twice, which a 3B fp32 model
        on a 23 GB machine cannot afford. With the weights whole on one CPU device, a slice of
        the host buffer is handed back to XLA without a copy. None for sharded or accelerator
        weights, or under a trace: the jitted caller then uses `unstack_layers`.
        """
        stacked = _layer_arrays(self.layers)
        if not all(_on_one_cpu(a) for a in jax.tree.leaves(stacked)):
            return None

        def view(a: Array, i: int) -> Array:  # np.asarray aliases a CPU buffer, and so does put
            return jax.device_put(np.asarray(a)[i], a.sharding)

        return tuple(
            jax.tree.map(lambda a, i=i: view(a, i), stacked) for i in range(self.config.num_layers)
        )

    def logits(self, hidden: Array, vocab_slice: tuple[int, int] | None = None) -> Array:
        """fp32 logits of `hidden`; `vocab_slice=(lo, hi)` computes only columns lo..hi-1."""
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        w = self.embed_out[...]
        lo, hi = (0, cfg.padded_vocab_size) if vocab_slice is None else vocab_slice
        if vocab_slice is not None:
            w = w[lo:hi]
        out = _project(hidden.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
        if hi > cfg.vocab_size:  # padding rows of the table are never a valid token
            valid = jnp.arange(lo, hi) < cfg.vocab_size
            out = jnp.where(valid, out, NEG_INF)
        return sharding.constrain(
            out, ("activation_batch", "activation_length", "activation_vocab")[-out.ndim :]
        )


# Rows up to which a decoding step's projections run as (W @ x^T)^T on XLA CPU.
SKINNY_ROWS = 64


def _project(x: Array, w: Array, **kw: Any) -> Array:
    """x [..., K] times a kernel w [N, K] (out-major, as stored): [..., N].

    Why: for the skinny products of decoding (a few rows against a wide kernel), XLA CPU's
    `x @ w.T` runs at about half the speed of `w @ x.T` (measured 2026-12-03 on 2 cores,
    hidden 512: the 51k-column output projection at 16 rows 26 -> 16 ms, the six layers'
    projections 16 -> 10.5 ms; at 1 row the same, above 64 rows slower). The barrier stops
    layout assignment from turning the product back into the slow form to make the small
    transpose free. Only one-token-per-row inputs take it (decoding steps and the prompt's last
    logits); training rows, the prompt's layers, other backends and wider inputs take the plain
    einsum.
    """
    rows = math.prod(x.shape[:-1])
    one_token_per_row = x.ndim == 2 or x.shape[-2] == 1  # a decoding step, not a training row
    if not one_token_per_row or rows > SKINNY_ROWS or jax.default_backend() != "cpu":
        return jnp.einsum("...k,nk->...n", x, w, **kw)
    out_t = jax.lax.optimization_barrier(jnp.einsum("nk,rk->nr", w, x.reshape(rows, -1), **kw))
    return out_t.T.reshape(*x.shape[:-1], w.shape[0])


# --------------------------------------------------------------------------------------------
# Pure layer math (shared by the scanned and the unrolled paths)
# --------------------------------------------------------------------------------------------


def _on_one_cpu(a: Any) -> bool:
    """A concrete array held whole by one CPU device (its host buffer can be viewed)."""
    return (
        isinstance(a, jax.Array)
        and not isinstance(a, jax.core.Tracer)
        and len(a.sharding.device_set) == 1
        and next(iter(a.sharding.device_set)).platform == "cpu"
    )


def _layer_arrays(layers: DecoderLayers) -> dict[str, Array]:
    """The stacked layer parameters as a flat dict of arrays (what `lax.scan` iterates over)."""
    a, m = layers.attention, layers.mlp
    out = {
        "ln1_scale": layers.input_layernorm.scale[...],
        "ln1_bias": layers.input_layernorm.bias[...],
        "ln2_scale": layers.post_attention_layernorm.scale[...],
        "ln2_bias": layers.post_attention_layernorm.bias[...],
        "qkv_kernel": a.qkv_kernel[...],
        "out_kernel": a.out_kernel[...],
        "mlp_in_kernel": m.in_kernel[...],
        "mlp_in_bias": m.in_bias[...],
        "mlp_out_kernel": m.out_kernel[...],
        "mlp_out_bias": m.out_bias[...],
    }
    if hasattr(a, "qkv_bias"):
        out["qkv_bias"] = a.qkv_bias[...]
        out["out_bias"] = a.out_bias[...]
    return out


def _layer_norm(x: Array, scale: Array, bias: Array, eps: float, dt) -> Array:
    """LayerNorm with statistics in fp32 (biased variance, as torch)."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dt)


def _rotary_tables(positions: Array, cfg: GPTNeoXConfig) -> tuple[Array, Array]:
    """cos, sin [B, T, rotary_dim] in fp32, NeoX layout (the half-frequencies repeated)."""
    rd = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rotary_base ** (np.arange(0, rd, 2, dtype=np.float32) / rd))
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _apply_rotary(x: Array, rope: tuple[Array, Array], rd: int) -> Array:
    """Rotate-half rotary on the first `rd` dims of each head of x [B, T, H, hd]."""
    if rd == 0:
        return x
    cos, sin = (t[:, :, None, :] for t in rope)
    x_rot, x_pass = x[..., :rd].astype(jnp.float32), x[..., rd:]
    half = rd // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    x_rot = (x_rot * cos + rotated * sin).astype(x.dtype)
    return jnp.concatenate([x_rot, x_pass], axis=-1)


def _attention_mask(q_segments: Array, k_segments: Array, q_slots: Array, k_slots: Array) -> Array:
    """[B, 1, T, S] bool: same segment, key not padding, key not in the future."""
    same = q_segments[:, :, None] == k_segments[:, None, :]
    real = (k_segments != 0)[:, None, :]
    causal = (k_slots[None, :] <= q_slots[:, None])[None]
    return (same & real & causal)[:, None]


def _attention(cfg: GPTNeoXConfig, q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Attention without a cache: q/k/v [B,H,T,hd], `mask` [B,1,T,T] causal in slot order.

    With `cfg.attention_block` the query blocks skip the keys after their last row: those are
    masked for every query of the block, so the result is the same (except in rows that may see
    no key at all, padding, which average fewer values: nothing reads them)."""
    T, C = q.shape[2], cfg.attention_block
    if not C or T <= C:
        return _softmax_attention(cfg, q, k, v, mask)
    blocks = []
    for lo in range(0, T, C):
        hi = min(lo + C, T)
        blocks.append(
            _softmax_attention(
                cfg, q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi], mask[:, :, lo:hi, :hi]
            )
        )
    return jnp.concatenate(blocks, axis=2)


def _softmax_attention(cfg: GPTNeoXConfig, q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Softmax attention, scores and softmax in fp32. q [B,H,T,hd], k/v [B,H,S,hd]."""
    scale = 1.0 / math.sqrt(cfg.head_dim)
    scores = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bhsd->bhtd", probs, v)


def _cached_attention(cfg: GPTNeoXConfig, q: Array, k: Array, v: Array, mask: Array) -> Array:
    """As `_attention` with cache buffers k [B*H, hd, S] and v [B*H, S, hd] (see KVCache)."""
    B, H, T, hd = q.shape
    scale = 1.0 / math.sqrt(hd)
    scores = (
        jnp.einsum("ntd,nds->nts", q.reshape(B * H, T, hd), k, preferred_element_type=jnp.float32)
        * scale
    )
    scores = jnp.where(mask, scores.reshape(B, H, T, -1), NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(B * H, T, -1)
    return jnp.einsum("nts,nsd->ntd", probs, v).reshape(B, H, T, hd)


def _decoder_layer(
    cfg: GPTNeoXConfig,
    p: dict[str, Array],
    x: Array,
    rope: tuple[Array, Array],
    mask: Array,
    kv: tuple[Array, Array] | None,
    cache_index: Array | None,
) -> tuple[Array, tuple[Array, Array] | None]:
    """One GPT-NeoX layer on x [B, T, D]; `kv` is this layer's (k, v) cache (or None)."""
    dt = jnp.dtype(cfg.dtype)
    act = _ACTIVATIONS[cfg.hidden_act]
    eps = cfg.layer_norm_eps
    c = lambda w: w.astype(dt)

    h = _layer_norm(x, p["ln1_scale"], p["ln1_bias"], eps, dt)
    # Kernels enter the dots as 2D [out, in] views (free reshapes): given the 4D/3D kernels, XLA
    # CPU transposes them at every call.
    H, hd = cfg.num_heads, cfg.head_dim
    qkv_w = c(p["qkv_kernel"]).reshape(3 * H * hd, -1)
    qkv = _project(h, qkv_w).reshape(*h.shape[:2], H, 3, hd)
    if "qkv_bias" in p:
        qkv = qkv + c(p["qkv_bias"])
    qkv = checkpoint_name(qkv, "qkv")
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    q = _apply_rotary(q, rope, cfg.rotary_dim)
    k = _apply_rotary(k, rope, cfg.rotary_dim)
    head_axes = ("activation_batch", "activation_heads", "activation_length", "activation_kv")
    q, k, v = (sharding.constrain(t.transpose(0, 2, 1, 3), head_axes) for t in (q, k, v))

    if kv is None:
        attn = _attention(cfg, q, k, v, mask)
    else:  # write this step's keys/values into the cache, attend over all of it
        B, H, T, hd = k.shape
        k_t = k.reshape(B * H, T, hd).transpose(0, 2, 1).astype(kv[0].dtype)
        k = jax.lax.dynamic_update_slice(kv[0], k_t, (0, 0, cache_index))
        v = jax.lax.dynamic_update_slice(
            kv[1], v.reshape(B * H, T, hd).astype(kv[1].dtype), (0, cache_index, 0)
        )
        kv = (k, v)
        attn = _cached_attention(cfg, q, k, v, mask)
    attn = attn.transpose(0, 2, 1, 3).reshape(*x.shape[:2], H * hd)
    attn = _project(attn, c(p["out_kernel"]).reshape(-1, H * hd))
    if "out_bias" in p:
        attn = attn + c(p["out_bias"])

    def mlp(y: Array) -> Array:
        y = _layer_norm(y, p["ln2_scale"], p["ln2_bias"], eps, dt)
        y = _project(y, c(p["mlp_in_kernel"])) + c(p["mlp_in_bias"])
        y = sharding.constrain(y, ("activation_batch", "activation_length", "activation_mlp"))
        y = checkpoint_name(act(y), "mlp_hidden")
        return _project(y, c(p["mlp_out_kernel"])) + c(p["mlp_out_bias"])

    if cfg.use_parallel_residual:
        x = x + attn + mlp(x)
    else:
        x = x + attn
        x = x + mlp(x)
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    return x, kv


def _run_layers(
    cfg: GPTNeoXConfig,
    params: dict[str, Array] | Sequence[dict[str, Array]],
    x: Array,
    rope: tuple[Array, Array],
    mask: Array,
    cache: KVCache | None,
) -> tuple[Array, tuple[Array, Array] | None]:
    """Apply all layers. Returns x and the new per-layer (k, v) caches.

    Without a cache the stack is scanned or unrolled as configured. With a cache (decoding) it
    is always unrolled: each layer's cache buffer is then updated in place, where a scan would
    slice and restack every buffer at every step.
    """
    layer = _decoder_layer
    if cfg.remat_policy != "none":
        layer = jax.checkpoint(
            _decoder_layer, policy=_REMAT_POLICIES[cfg.remat_policy], static_argnums=(0,)
        )
    stacked = isinstance(params, dict)
    if cache is None and cfg.scan_layers and stacked:

        def body(h, p):
            return layer(cfg, p, h, rope, mask, None, None)[0], None

        x, _ = jax.lax.scan(body, x, params)
        return x, None

    ks, vs = [], []
    for i in range(cfg.num_layers):
        p = jax.tree.map(lambda a, i=i: a[i], params) if stacked else params[i]
        kv = None if cache is None else (cache.k[i], cache.v[i])
        x, kv = layer(cfg, p, x, rope, mask, kv, None if cache is None else cache.index)
        if kv is not None:
            ks.append(kv[0])
            vs.append(kv[1])
    return x, (None if cache is None else (tuple(ks), tuple(vs)))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def count_params(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract_model(config: GPTNeoXConfig) -> GPTNeoX:
    """The model with ShapeDtypeStructs for parameters: nothing is allocated."""
    return common.abstract(GPTNeoX, config)


def params_of(model: GPTNeoX) -> dict[str, Any]:
    """The parameter tree of a model as a plain nested dict of arrays (what we checkpoint)."""
    return common.variables_of(model)


def model_from_params(config: GPTNeoXConfig, params: dict[str, Any]) -> GPTNeoX:
    """A model of `config` holding `params` (a tree shaped like `params_of`'s)."""
    return common.with_variables(GPTNeoX, config, params)


# -- growing the vocabulary ------------------------------------------------------------------
# LLM-CXR keeps GPT-NeoX unchanged and only grows its embedding tables: text tokens first, then
# one row per VQ-GAN image code (the id layout is the tokenizer's, tokenizer.py). The tables are
# padded to a multiple of 128 rows (TPU-friendly matmul tiles); the padding rows exist only in
# memory: their logits are masked and they are dropped on export.

TPU_PAD_MULTIPLE = 128


def resize_vocab_params(
    config: GPTNeoXConfig,
    params: dict[str, Any],
    new_vocab_size: int,
    *,
    pad_multiple: int = TPU_PAD_MULTIPLE,
    rng: jax.Array | int = 0,
    stddev: float = 0.02,
) -> tuple[GPTNeoXConfig, dict[str, Any]]:
    """Grow `embed_in` and `embed_out` of a parameter tree (numpy or jax arrays) in place of a
    model, so a 3B import can be resized without a second copy of the model in memory.

    Rows of existing tokens are kept. New rows (ids old..new-1) are drawn from N(0, stddev^2)
    independently for `embed_in` and `embed_out`, as LLM-CXR does (0.02 is GPT-NeoX's
    initializer range; the VQ-GAN codebook is not copied: it lives in another space). Rows past
    `new_vocab_size` up to the multiple of `pad_multiple` are zero and never produced.
    """
    old = config.vocab_size
    if new_vocab_size < old:
        raise InputError(f"resize_vocab only grows the vocabulary: {old} -> {new_vocab_size}")
    new_config = config.replace(vocab_size=new_vocab_size, vocab_pad_multiple=pad_multiple)
    vp = new_config.padded_vocab_size
    d = config.hidden_size
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    k_in, k_out = jax.random.split(key)

    def grow_rows(table: Any, k: jax.Array) -> Any:  # [V, D] -> [Vp, D]
        xp = np if isinstance(table, np.ndarray) else jnp
        fresh = np.asarray(stddev * jax.random.normal(k, (new_vocab_size - old, d), jnp.float32))
        pad = xp.zeros((vp - new_vocab_size, d), table.dtype)
        return xp.concatenate([table[:old], xp.asarray(fresh).astype(table.dtype), pad], axis=0)

    params = dict(params)
    params["embed_in"] = grow_rows(params["embed_in"], k_in)
    params["embed_out"] = grow_rows(params["embed_out"], k_out)
    return new_config, params


def resize_vocab(model: GPTNeoX, new_vocab_size: int, **kwargs: Any) -> GPTNeoX:
    """A copy of `model` with `new_vocab_size` real tokens (see `resize_vocab_params`)."""
    config, params = resize_vocab_params(model.config, params_of(model), new_vocab_size, **kwargs)
    return model_from_params(config, params)
