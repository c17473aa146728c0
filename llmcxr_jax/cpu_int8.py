"""GPT-NeoX with dynamic-int8 weights for generation on a CPU, through PyTorch's fbgemm kernels.

Why: decoding one token reads every weight once, so on a CPU its speed is memory bandwidth.
int8 weights read 4x fewer bytes than fp32, but XLA's CPU backend has no fast int8
matrix-vector product: measured on a 2-core Xeon (jax 0.10.2), a 2560x10240 product takes
4.2 ms in fp32 and 26-37 ms with int8 weights dequantised in the dot, 29 ms as int8 x int8 ->
int32 (oneDNN / XNNPACK flags change nothing). fbgemm's dynamic int8 linear (activations
quantised per call, int8 x int8 -> int32, rescaled to fp32) does it in 1.1-1.7 ms. So the
quantised path runs the same network in PyTorch rather than teaching XLA a new kernel.

What: our GPT-NeoX forward written in torch (parallel residual, partial NeoX rotary, exact
GELU, a KV cache), every Linear (QKV, attention out, MLP in/out, the output head) held as
per-output-channel symmetric int8 (`scale = max|w_row| / 127`), embeddings and layer norms in
fp32. `quantize=False` keeps fp32 Linears: the same code as a reference, tested against the JAX
model. Weights arrive one tensor at a time (from a JAX model, an Orbax checkpoint read layer by
layer, or a Hugging Face directory read lazily), so the fp32 model is never whole in memory.

Decoding follows `decode.generate`: left-padded prompts, stop tokens, token masks,
`vocab_range` (image-constrained decoding computes only the image rows of the head and returns
exactly `max_new_tokens` codes), and `Sampler` semantics (greedy = first argmax; temperature;
top-k; nucleus keeping the most likely id). The random stream is torch's, seeded from the JAX
key, so sampled tokens differ from the JAX path's; greedy tokens differ only where int8
rounding changes the argmax (measured in docs/performance.md).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr_jax.errors import InputError, positive_int
from llmcxr_jax.models.gpt_neox import GPTNeoXConfig

_LAYER_KEYS = {
    "input_layernorm.weight": "ln1_w",
    "input_layernorm.bias": "ln1_b",
    "post_attention_layernorm.weight": "ln2_w",
    "post_attention_layernorm.bias": "ln2_b",
    "attention.query_key_value.weight": "qkv_w",
    "attention.query_key_value.bias": "qkv_b",
    "attention.dense.weight": "out_w",
    "attention.dense.bias": "out_b",
    "mlp.dense_h_to_4h.weight": "in_w",
    "mlp.dense_h_to_4h.bias": "in_b",
    "mlp.dense_4h_to_h.weight": "mlp_out_w",
    "mlp.dense_4h_to_h.bias": "mlp_out_b",
}


def _torch():
    import torch

    return torch


class QuantizedRows:
    """A [out, in] weight as per-row symmetric int8 plus fp32 scales; makes fbgemm Linears."""

    def __init__(self, w: np.ndarray, chunk_rows: int = 4096):
        torch = _torch()
        w = np.asarray(w, np.float32)
        scale = np.abs(w).max(axis=1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float64)
        q = np.empty(w.shape, np.int8)
        for r in range(0, w.shape[0], chunk_rows):  # bounded temporaries (the head is 525 MB)
            block = w[r : r + chunk_rows] / scale[r : r + chunk_rows, None].astype(np.float32)
            np.rint(block, out=block)
            np.clip(block, -127, 127, out=block)
            q[r : r + chunk_rows] = block
        self.q = torch.from_numpy(q)
        self.scale = torch.from_numpy(scale)

    def linear(self, bias: Any = None, rows: slice = slice(None)) -> Any:
        """A dynamic int8 Linear over `rows` of the weight (all by default), each input row
        quantised on its own scale (`RowScaledLinear`)."""
        torch = _torch()
        q, s = self.q[rows].contiguous(), self.scale[rows].contiguous()
        zero = torch.zeros(q.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantised tensors are marked deprecated in torch 2.13
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(q, s, zero, 0)
            lin = torch.ao.nn.quantized.dynamic.Linear(q.shape[1], q.shape[0], dtype=torch.qint8)
            lin.set_weight_bias(qw, None)
        return RowScaledLinear(lin, bias)

    def dequantized(self) -> np.ndarray:
        return (self.q.numpy().astype(np.float32) * self.scale.numpy()[:, None]).astype(np.float32)


class RowScaledLinear:
    """fbgemm's dynamic int8 Linear with one activation scale per input row, not per call.

    fbgemm quantises the whole input with one scale, so a row's output would depend on the
    other rows of the batch (its padding, its neighbours) and a prompt's prefill would round
    differently from its token-by-token decode. Dividing each row by its max |value| first
    (and multiplying the output back, the product being linear) gives every row the same
    relative step of 1/127 of its own range: outputs independent of the batch, at the cost of
    two element-wise operations.
    """

    def __init__(self, lin: Any, bias: Any = None):
        self.lin, self.bias = lin, bias

    def __call__(self, x: Any) -> Any:
        if x.numel() == x.shape[-1]:  # one row (a decoding step): its own scale already
            y = self.lin(x)
            return y if self.bias is None else y.add_(self.bias)
        s = x.abs().amax(-1, keepdim=True).clamp_min(1e-30)
        y = self.lin(x / s)  # a fresh tensor: scaled back (and biased) in one pass over it
        return y.mul_(s) if self.bias is None else _torch().addcmul(self.bias, y, s)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where the C library has none."""
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def _release_freed_heap() -> None:
    """Give the heap's freed pages back to the system (glibc's `malloc_trim`; elsewhere nothing).

    Building quantises one weight after another; its fp32 and int8 temporaries of up to ~40 MB
    sit under glibc's adaptive mmap threshold (32 MB), so they are freed into the heap, not
    unmapped, and the resident size of a 3B build grew ~1.5x its int8 payload (measured: 3.7 GB
    of layers for 2.5 GB of weights). Trimming after each Linear keeps it near the payload.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _fp32_linear(w: np.ndarray, b: np.ndarray | None) -> Any:
    torch = _torch()
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.asarray(w, np.float32)))
        if b is not None:
            lin.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
    return lin.requires_grad_(False)


class Int8GPTNeoX:
    """GPT-NeoX inference in torch on the CPU, int8 Linears (or fp32 with quantize=False).

    Build it from (Hugging Face key, array) pairs in any order (`from_tensors`), or with
    `from_model` / `from_checkpoint` / `from_hf`. `generate`, `stream` and `prefill_logits`
    take the arguments of `decode.generate`, `decode.stream` and `decode.prefill`.
    """

    def __init__(self, config: GPTNeoXConfig, quantize: bool = True):
        # fbgemm, named: the default "x86" engine packs the same kernels but keeps ~45% more
        # memory per weight here (measured), and oneDNN's int8 matrix-vector is 3x slower
        _torch().backends.quantized.engine = "fbgemm"
        self.config = config
        self.quantize = quantize
        self.layers: list[dict[str, Any]] = [{} for _ in range(config.num_layers)]
        self.embed_in: Any = None
        self.final_ln: dict[str, Any] = {}
        self._head_rows: QuantizedRows | None = None
        self._head_fp32: np.ndarray | None = None
        self._heads: dict[tuple[int, int], Any] = {}
        self._pending: dict[tuple[int, str], np.ndarray] = {}

    # -- building ----------------------------------------------------------------------------

    @classmethod
    def from_tensors(
        cls,
        config: GPTNeoXConfig,
        tensors: Iterable[tuple[str, np.ndarray]],
        quantize: bool = True,
    ) -> Int8GPTNeoX:
        m = cls(config, quantize)
        for key, t in tensors:
            m._add(key, t)
        m._finish()
        return m

    @classmethod
    def from_model(cls, model: Any, quantize: bool = True) -> Int8GPTNeoX:
        """From a JAX `GPTNeoX` (its tensors are converted one at a time)."""
        from llmcxr_jax.convert.hf_gpt_neox import hf_tensors
        from llmcxr_jax.models.gpt_neox import params_of

        return cls.from_tensors(model.config, hf_tensors(model.config, params_of(model)), quantize)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, quantize: bool = True) -> Int8GPTNeoX:
        """From one of our model checkpoints, restoring one parameter at a time (all layers of
        it), so the fp32 model is never whole in memory."""
        from llmcxr_jax import checkpoint

        config = checkpoint.load_config(path, "gpt_neox")
        return cls.from_tensors(config, _checkpoint_tensors(path, config), quantize)

    @classmethod
    def from_hf(cls, hf_dir: str | os.PathLike, quantize: bool = True) -> Int8GPTNeoX:
        """From a Hugging Face GPT-NeoX directory (e.g. `llmcxr-jax export-hf`), read lazily."""
        from llmcxr_jax.convert.hf_gpt_neox import IGNORED_KEYS, TensorFiles, read_hf_config

        config = read_hf_config(hf_dir)
        files = TensorFiles(hf_dir)
        keys = [k for k in files.names() if not IGNORED_KEYS.search(k)]
        return cls.from_tensors(config, ((k, files.get(k)) for k in keys), quantize)

    def _linear(self, w: np.ndarray, b: np.ndarray | None) -> Any:
        torch = _torch()
        if not self.quantize:
            return _fp32_linear(w, b)
        bias = None if b is None else torch.from_numpy(np.asarray(b, np.float32)).clone()
        return QuantizedRows(w).linear(bias)

    def _add(self, key: str, t: np.ndarray) -> None:
        torch = _torch()
        t = np.require(t, np.float32, ["C", "W"])  # torch wants writable memory
        if key == "gpt_neox.embed_in.weight":
            self.embed_in = torch.from_numpy(t)
        elif key in ("embed_out.weight", "lm_head.weight"):
            if self.quantize:
                self._head_rows = QuantizedRows(t)
            else:
                self._head_fp32 = np.ascontiguousarray(t)
        elif key.startswith("gpt_neox.final_layer_norm."):
            self.final_ln[key.rsplit(".", 1)[1]] = torch.from_numpy(t.copy())
        elif key.startswith("gpt_neox.layers."):
            i_str, name = key[len("gpt_neox.layers.") :].split(".", 1)
            if name not in _LAYER_KEYS:
                raise InputError(f"unexpected tensor {key}")
            i, short = int(i_str), _LAYER_KEYS[name]
            layer = self.layers[i]
            if short.startswith("ln"):
                layer[short] = torch.from_numpy(t.copy())
                return
            base = short.rsplit("_", 1)[0]
            self._pending[(i, short)] = t
            w, b = self._pending.get((i, base + "_w")), self._pending.get((i, base + "_b"))
            if w is not None and (b is not None or not self._has_bias(base)):
                layer[base] = self._linear(w, b)
                self._pending.pop((i, base + "_w"), None)
                self._pending.pop((i, base + "_b"), None)
                del w, b, t
                _release_freed_heap()
        else:
            raise InputError(f"unexpected tensor {key}")

    def _has_bias(self, base: str) -> bool:
        return base in ("in", "mlp_out") or self.config.attention_bias

    def _finish(self) -> None:
        missing = [
            f"layer {i} {name}"
            for i, layer in enumerate(self.layers)
            for name in ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "qkv", "out", "in", "mlp_out")
            if name not in layer
        ]
        if self.embed_in is None:
            missing.append("embed_in")
        if self._head_rows is None and self._head_fp32 is None:
            missing.append("embed_out")
        if set(self.final_ln) != {"weight", "bias"}:
            missing.append("final_layer_norm")
        if missing or self._pending:
            raise InputError(f"incomplete GPT-NeoX weights: missing {', '.join(missing[:5])}")
        self.head(None)  # packed now, so the first generation does not pay for it
        _release_freed_heap()
        rd = self.config.rotary_dim
        torch = _torch()
        self._inv_freq = 1.0 / (
            self.config.rotary_base ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd)
        )

    def head(self, vocab_range: tuple[int, int] | None = None) -> Any:
        """The output projection over all ids, or only over ids lo..hi-1 (cached per range)."""
        key = vocab_range or (0, self.config.vocab_size)
        if key not in self._heads:
            rows = slice(*key)
            if self._head_rows is not None:
                self._heads[key] = self._head_rows.linear(None, rows)
            else:
                self._heads[key] = _fp32_linear(self._head_fp32[rows], None)
        return self._heads[key]

    def weight_bytes(self) -> int:
        """Bytes of weights read per decoded token (int8 Linears, fp32 norms, head)."""
        per = 1 if self.quantize else 4
        c = self.config
        D, F = c.hidden_size, c.intermediate_size
        linear = c.num_layers * (3 * D * D + D * D + 2 * D * F)
        return per * (linear + c.vocab_size * D)

    # -- forward -----------------------------------------------------------------------------

    def _rope(self, positions: Any) -> tuple[Any, Any]:
        torch = _torch()
        freqs = positions.to(torch.float32)[..., None] * self._inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos()[:, None], emb.sin()[:, None]  # [B, 1, T, rd]

    def _rotate(self, x: Any, cos: Any, sin: Any) -> Any:
        torch = _torch()
        rd = self.config.rotary_dim
        if rd == 0:
            return x
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        half = rd // 2
        rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
        return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)

    def _layer(self, p: dict, x: Any, cos: Any, sin: Any, mask: Any, cache: Any, at: int) -> Any:
        torch = _torch()
        F = torch.nn.functional
        c = self.config
        B, T, _ = x.shape
        H, hd = c.num_heads, c.head_dim
        h = F.layer_norm(x, (c.hidden_size,), p["ln1_w"], p["ln1_b"], c.layer_norm_eps)
        qkv = p["qkv"](h).view(B, T, H, 3, hd).transpose(1, 2)  # [B, H, T, 3, hd]
        qk = self._rotate(qkv[..., :2, :], cos[..., None, :], sin[..., None, :])  # together
        q, k = qk[..., 0, :], qk[..., 1, :]
        cache[0][:, :, at : at + T] = k
        cache[1][:, :, at : at + T] = qkv[..., 2, :]
        S = at + T
        k, v = cache[0][:, :, :S], cache[1][:, :, :S]
        if mask is None:  # a prefill without padding: causal, which skips the masked blocks
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, mask)
        attn = p["out"](attn.transpose(1, 2).reshape(B, T, H * hd))

        def mlp(y: Any) -> Any:
            y = F.layer_norm(y, (c.hidden_size,), p["ln2_w"], p["ln2_b"], c.layer_norm_eps)
            y = p["in"](y)
            y = F.gelu(y, approximate="none" if c.hidden_act == "gelu" else "tanh")
            return p["mlp_out"](y)

        if c.use_parallel_residual:
            return x + attn + mlp(x)
        x = x + attn
        return x + mlp(x)

    def _hidden(self, ids: Any, positions: Any, mask: Any, cache: list, at: int) -> Any:
        torch = _torch()
        F = torch.nn.functional
        c = self.config
        x = F.embedding(ids, self.embed_in)
        cos, sin = self._rope(positions)
        for p, kv in zip(self.layers, cache, strict=True):
            x = self._layer(p, x, cos, sin, mask, kv, at)
        return F.layer_norm(
            x, (c.hidden_size,), self.final_ln["weight"], self.final_ln["bias"], c.layer_norm_eps
        )

    def _new_cache(self, B: int, S: int) -> list:
        torch = _torch()
        c = self.config
        shape = (B, c.num_heads, S, c.head_dim)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(c.num_layers)]

    def _prefill(self, tokens: np.ndarray, mask: np.ndarray, cache_len: int) -> tuple:
        """Hidden state of each row's last position, the cache, the key mask [B, S], lengths."""
        torch = _torch()
        tokens = torch.from_numpy(np.asarray(tokens, np.int64))
        real = torch.from_numpy(np.asarray(mask, bool))
        B, P = tokens.shape
        n = real.sum(-1)
        positions = (real.cumsum(-1) - 1).clamp(min=0)
        keys = torch.zeros((B, cache_len), dtype=torch.bool)
        keys[:, :P] = real
        causal = torch.ones((P, P), dtype=torch.bool).tril()
        # a padding query attends to itself (never all-masked, so never NaN); real queries
        # never see padding keys; without padding the mask is the causal one (None: is_causal)
        att = (causal[None] & real[:, None, :]) | torch.eye(P, dtype=torch.bool)[None]
        cache = self._new_cache(B, cache_len)
        hidden = self._hidden(tokens, positions, None if real.all() else att[:, None], cache, 0)
        return hidden[:, -1], cache, keys, n

    def _head_logits(self, hidden: Any, vocab_range: tuple[int, int] | None) -> Any:
        return self.head(vocab_range)(hidden)

    # -- the decode API ----------------------------------------------------------------------

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """fp32 logits [B, T, vocab_size] at every position of unpadded rows (the model's
        `__call__` without padding columns): for measuring int8 against fp32."""
        torch = _torch()
        tokens = np.asarray(tokens)
        B, T = tokens.shape
        with torch.inference_mode():
            ids = torch.from_numpy(tokens.astype(np.int64))
            positions = torch.arange(T)[None].expand(B, T)
            hidden = self._hidden(ids, positions, None, self._new_cache(B, T), 0)  # causal
            return self._head_logits(hidden, None).numpy().astype(np.float32)

    def prefill_logits(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """fp32 next-token logits [B, padded_vocab_size] after each (left-padded) prompt; the
        padding ids get -inf, as they can never be produced."""
        torch = _torch()
        tokens = np.asarray(tokens)
        mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
        with torch.inference_mode():
            hidden, _, _, _ = self._prefill(tokens, mask, tokens.shape[1])
            logits = self._head_logits(hidden, None).numpy().astype(np.float32)
        pad = self.config.padded_vocab_size - logits.shape[1]
        return np.pad(logits, ((0, 0), (0, pad)), constant_values=-np.inf) if pad else logits

    def generate(
        self,
        prompt_tokens: np.ndarray,
        prompt_mask: np.ndarray | None = None,
        *,
        max_new_tokens: int,
        sampler: Any = None,
        stop_tokens: Sequence[int] | None = None,
        token_mask: np.ndarray | None = None,
        rng: Any = 0,
        pad_id: int = 0,
        vocab_range: tuple[int, int] | None = None,
        cache_chunk: int = 0,
    ) -> Any:
        """`decode.generate` on this model: a `decode.GenerateOutput` of numpy arrays."""
        from llmcxr_jax import decode

        tokens = np.asarray(prompt_tokens, np.int32)
        B, P = tokens.shape
        mask = np.ones((B, P), bool) if prompt_mask is None else np.asarray(prompt_mask, bool)
        out = np.full((B, max_new_tokens), pad_id, np.int32)
        lengths = np.zeros(B, np.int32)
        done = np.zeros(B, bool)
        stops = self._stop_sets(stop_tokens, B)
        for step, tok in enumerate(
            self._steps(tokens, mask, max_new_tokens, sampler, token_mask, rng, vocab_range, done)
        ):
            tok = np.where(done, pad_id, tok)
            out[:, step] = tok
            lengths += ~done
            done |= np.array([int(t) in s for t, s in zip(tok, stops, strict=True)])
        return decode.GenerateOutput(tokens=out, lengths=lengths, stopped=done)

    def stream(
        self,
        prompt: Sequence[int] | np.ndarray,
        *,
        max_new_tokens: int,
        sampler: Any = None,
        stop_tokens: Sequence[int] = (),
        token_mask: np.ndarray | None = None,
        rng: Any = 0,
        pad_id: int = 0,
        vocab_range: tuple[int, int] | None = None,
        pad_to: int = 0,
    ) -> Iterator[int]:
        """`decode.stream` on this model: one prompt's new tokens as they are sampled."""
        ids = np.asarray(prompt, np.int32).reshape(1, -1)
        stops = {int(t) for t in stop_tokens}
        done = np.zeros(1, bool)

        def tokens() -> Iterator[int]:
            steps = self._steps(
                ids,
                np.ones(ids.shape, bool),
                max_new_tokens,
                sampler,
                token_mask,
                rng,
                vocab_range,
                done,
            )
            for tok in steps:
                yield int(tok[0])
                if int(tok[0]) in stops:
                    done[0] = True
                    return

        return tokens()

    # -- machinery ---------------------------------------------------------------------------

    @staticmethod
    def _stop_sets(stop_tokens: Any, B: int) -> list[set[int]]:
        if stop_tokens is None or len(stop_tokens) == 0:
            return [set() for _ in range(B)]
        if np.ndim(stop_tokens[0]) == 0:
            return [{int(t) for t in stop_tokens} for _ in range(B)]
        return [{int(t) for t in row if int(t) >= 0} for row in stop_tokens]

    def _allowed(self, token_mask: Any, vocab_range: tuple[int, int] | None, B: int) -> Any:
        torch = _torch()
        lo, hi = vocab_range or (0, self.config.vocab_size)
        allowed = np.ones((B, hi - lo), bool)
        if token_mask is not None:
            m = np.asarray(token_mask, bool)
            m = m[..., : hi - lo]
            if m.shape[-1] < hi - lo:
                m = np.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, hi - lo - m.shape[-1])])
            allowed &= np.broadcast_to(m, allowed.shape)
        return torch.from_numpy(allowed)

    def _steps(
        self,
        tokens: np.ndarray,
        mask: np.ndarray,
        max_new_tokens: int,
        sampler: Any,
        token_mask: Any,
        rng: Any,
        vocab_range: tuple[int, int] | None,
        done: np.ndarray,
    ) -> Iterator[np.ndarray]:
        """Prefill, then one sampled token per row per step (rows in `done` are still fed, as
        in `decode.generate`, and their tokens ignored); stops early once every row is done."""
        from llmcxr_jax import decode

        torch = _torch()
        c = self.config
        positive_int(max_new_tokens, "max_new_tokens")
        sampler = sampler or decode.GREEDY
        if not sampler.greedy and not sampler.temperature > 0:
            raise InputError("sampling needs temperature > 0 (use Sampler.argmax() for greedy)")
        B, P = tokens.shape
        if P + max_new_tokens > c.max_position_embeddings:
            raise ValueError(
                f"prompt {P} + {max_new_tokens} new tokens exceed the model's "
                f"{c.max_position_embeddings} positions"
            )
        if vocab_range is not None:
            lo, hi = (int(v) for v in vocab_range)
            if not 0 <= lo < hi <= c.vocab_size:
                raise ValueError(f"vocab_range {vocab_range} is not inside [0, {c.vocab_size})")
            vocab_range = (lo, hi)
        lo = 0 if vocab_range is None else vocab_range[0]
        allowed = self._allowed(token_mask, vocab_range, B)
        gen = torch.Generator().manual_seed(_seed_of(rng))
        with torch.inference_mode():
            hidden, cache, keys, n = self._prefill(tokens, mask, P + max_new_tokens)
            positions = n.clone()
            for step in range(max_new_tokens):
                logits = self._head_logits(hidden, vocab_range)
                tok = lo + _pick(logits, allowed, sampler, gen)
                yield tok.numpy().astype(np.int32)
                if step + 1 == max_new_tokens or done.all():
                    return
                at = P + step
                keys[:, at] = True
                att = keys[:, None, None, : at + 1]
                hidden = self._hidden(tok[:, None], positions[:, None], att, cache, at)[:, -1]
                positions += 1


def _checkpoint_tensors(
    path: str | os.PathLike, config: GPTNeoXConfig
) -> Iterator[tuple[str, np.ndarray]]:
    """(HF key, fp32 array) pairs of one of our checkpoints: the layer stack one layer at a
    time, layer after layer, where the checkpoint stores a chunk per layer
    (`checkpoint.layer_chunked`), else one parameter at a time (Orbax partial restore), so at
    most one layer's (or one parameter's) fp32 copy is in memory beside the int8 model."""
    import jax
    import orbax.checkpoint as ocp

    from llmcxr_jax import checkpoint
    from llmcxr_jax.convert.hf_gpt_neox import active_rules
    from llmcxr_jax.convert.mapping import nested_get, nested_set
    from llmcxr_jax.models import common
    from llmcxr_jax.models.gpt_neox import GPTNeoX

    abstract = common.variables_of(common.abstract(GPTNeoX, config))
    params_dir = Path(checkpoint.absolute(path)) / checkpoint.PARAMS_DIR

    def restore_whole(ckptr: Any, key_path: tuple) -> np.ndarray:
        """One parameter (all layers of it) straight into host memory, as fp32 numpy."""
        leaf = nested_get(abstract, key_path)
        item: dict = {}
        args: dict = {}
        nested_set(item, key_path, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
        nested_set(args, key_path, ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.float32))
        try:
            got = ckptr.restore(
                params_dir,
                args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True),
            )
        except Exception as e:
            raise checkpoint.read_error(params_dir, e) from e
        return np.asarray(nested_get(got, key_path))

    def converted(rule: Any, key: str, x: Any) -> tuple[str, np.ndarray]:
        x = rule.transform.to_torch(np.asarray(x, np.float32), config)
        return key, np.ascontiguousarray(x, np.float32)

    rules = active_rules(config)
    stacked = [rule for rule in rules if rule.per_layer]
    with ocp.PyTreeCheckpointer() as ckptr:
        for rule in rules:
            if not rule.per_layer:
                yield converted(rule, rule.key, restore_whole(ckptr, rule.path))
        readers = [checkpoint.read_layers(path, rule.path) for rule in stacked]
        if all(r is not None for r in readers):
            # layer by layer: a weight waiting for its bias is one layer's, not all layers'
            # (the MLP's input alone is 3.4 GB fp32 at 3B)
            for i in range(config.num_layers):
                for rule, layers in zip(stacked, readers, strict=True):
                    yield converted(rule, rule.key.format(i=i), next(layers))
            return
        for rule, layers in zip(stacked, readers, strict=True):
            # a checkpoint without a chunk per layer: one parameter (all layers of it) at a time
            whole = layers or restore_whole(ckptr, rule.path)
            for i, x in enumerate(whole):
                yield converted(rule, rule.key.format(i=i), x)
            whole = layers = x = None  # before the next is read: one in memory at a time


def _seed_of(rng: Any) -> int:
    """An int seed for torch from an int or a JAX PRNG key (its raw bits)."""
    if isinstance(rng, (int, np.integer)):
        return int(rng) & (2**63 - 1)
    import jax

    bits = np.asarray(jax.random.key_data(rng)).astype(np.uint64).reshape(-1)
    return int(np.bitwise_xor.reduce(bits * np.uint64(0x9E3779B97F4A7C15))) & (2**63 - 1)


NUCLEUS_CANDIDATES = 256  # the nucleus is looked for among the top ids first (no full sort)


def _pick(logits: Any, allowed: Any, sampler: Any, gen: Any) -> Any:
    """Next ids [B] from fp32 logits [B, V], as `decode.sample_logits` picks them.

    The nucleus is the smallest set of most likely ids whose probability reaches top_p (the
    most likely id always kept). A full sort of 51k logits costs ~4 ms a token on a CPU, so it
    is searched among the top `NUCLEUS_CANDIDATES` ids first, and the whole vocabulary only
    when their mass falls short (`_wide_nucleus`); the pick inside it is by inverse CDF (one
    uniform draw).
    """
    torch = _torch()
    logits = logits.float().masked_fill(~allowed, -math.inf)
    if sampler.greedy:
        return logits.argmax(-1)  # the first maximum, as decode.first_argmax
    logits = logits / float(sampler.temperature)
    if sampler.top_k:
        kth = torch.topk(logits, min(sampler.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    top_p = float(sampler.top_p)
    out = torch.empty(probs.shape[0], dtype=torch.long)
    for b, row in enumerate(probs):
        if top_p >= 1.0:  # no nucleus: the whole distribution, unsorted
            vals, idx, keep = row, None, row.shape[0]
        else:
            k = min(NUCLEUS_CANDIDATES, row.shape[0])
            vals, idx = torch.topk(row, k)
            if float(vals.sum()) < top_p and k < row.shape[0]:
                vals, idx, keep = _wide_nucleus(row.numpy(), top_p), None, row.shape[0]
            else:
                keep = max(int(((vals.cumsum(0) - vals) < top_p).sum()), 1)
        cum = vals[:keep].cumsum(0)
        u = torch.rand((), generator=gen, dtype=torch.float64) * float(cum[-1])
        j = min(int(torch.searchsorted(cum, u.to(cum.dtype), right=True)), keep - 1)
        while float(vals[j]) == 0.0 and j > 0:  # never an id of probability 0
            j -= 1
        out[b] = j if idx is None else idx[j]
    return out


def _wide_nucleus(probs: np.ndarray, top_p: float) -> Any:
    """`probs` [V] with every id outside the nucleus zeroed: a nucleus wider than the top
    candidates (a flat distribution: high temperature, an untrained model).

    Only the values need sorting to find the least likely id kept, and numpy sorts them 3.5x
    faster than `torch.sort` sorts values and ids (1.1 against 3.7 ms for 51k here); the
    nucleus is then every id at least that likely (ties at the edge all kept), and the pick
    runs over it in id order, which draws from the same distribution.
    """
    torch = _torch()
    desc = np.sort(probs)[::-1]
    before = np.cumsum(desc, dtype=np.float64) - desc
    keep = max(int((before < top_p).sum()), 1)
    return torch.from_numpy(np.where(probs >= desc[keep - 1], probs, np.float32(0)))


def load(path: str | os.PathLike, quantize: bool = True) -> Int8GPTNeoX:
    """From a Hugging Face directory (config.json) or one of our checkpoints / workdirs."""
    from llmcxr_jax import checkpoint

    p = Path(path)
    if (p / "config.json").exists() and not (p / "model_config.json").exists():
        return Int8GPTNeoX.from_hf(p, quantize)

    return Int8GPTNeoX.from_checkpoint(checkpoint.model_dir(p), quantize)
