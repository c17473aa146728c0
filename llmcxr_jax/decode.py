"""Autoregressive decoding with a functional KV cache.

`prefill` runs the prompt once and returns the last position's logits and a cache; `extend`
feeds new tokens one step at a time (jitted with the cache donated, so XLA updates it in place).
`generate` runs prefill and then the whole sampling loop inside `lax.while_loop`s, stopping
early once every row has emitted one of its stop tokens. The cache grows in phases of
`cache_chunk` slots (one while loop each), so early steps do not read a buffer sized for the last.

Prompts may be left- or right-padded (any contiguous run of real tokens per row, given by
`prompt_mask`): rows are first left-aligned, so that all rows share one cache write index while
each row keeps its own positions.

Sampling: greedy, or temperature with optional top-k and top-p (nucleus), always restricted to
an allowed-id set: the padding rows of a TPU-padded vocabulary are never produced, and a caller
may pass a per-call (or per-row) token mask, e.g. only text.

`stream` yields one prompt's tokens one at a time as they are sampled (a UI's streamed text),
the same tokens `generate` gives that prompt as a batch of one.

Image-constrained decoding (`vocab_range=(lo, hi)`): only the logits of ids lo..hi-1 are
computed (a slice of the output projection, 1,024 of 51,305 rows for LLM-CXR) and sampled, so
every step yields a valid image code and exactly `max_new_tokens` codes come out, with no
resampling loop. Top-p and temperature then apply to the distribution restricted to the codes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcxr_jax import sharding
from llmcxr_jax.errors import InputError, positive_int
from llmcxr_jax.models.gpt_neox import GPTNeoX, KVCache

Array = jax.Array


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["temperature", "top_p"],
    meta_fields=["greedy", "top_k"],
)
@dataclasses.dataclass(frozen=True)
class Sampler:
    """How the next token is picked. Changing `temperature` or `top_p` does not recompile."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off

    @classmethod
    def argmax(cls) -> Sampler:
        return cls(greedy=True)


GREEDY = Sampler.argmax()


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerateOutput:
    """tokens [B, max_new] (pad_id after a row stops); lengths [B] count tokens up to and
    including the stop token; stopped [B] says whether a stop token came."""

    tokens: Array
    lengths: Array
    stopped: Array


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def allowed_ids(vocab_size: int, padded_size: int, token_mask: Array | None, batch: int) -> Array:
    """[B, padded_size] bool: ids below vocab_size, intersected with the caller's mask."""
    base = jnp.arange(padded_size) < vocab_size
    if token_mask is None:
        return jnp.broadcast_to(base, (batch, padded_size))
    m = jnp.asarray(token_mask, bool)
    if m.shape[-1] < padded_size:
        m = jnp.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, padded_size - m.shape[-1])])
    elif m.shape[-1] > padded_size:
        raise ValueError(f"token mask covers {m.shape[-1]} ids; the model has {padded_size}")
    return jnp.broadcast_to(base & m, (batch, padded_size))


def first_argmax(x: Array) -> Array:
    """Index of the first maximum along the last axis, as `jnp.argmax`, in two plain reductions.

    XLA CPU lowers `jnp.argmax` to a variadic (value, index) reduce that runs on one thread at
    about 0.4 G elements/s: 1.9 ms a step over 16 x 51k logits, as much as four of the decode
    step's layer matmuls (benchmarks/decode.py). A max, then a min over the indices that attain
    it, gives the same index (ties go to the lowest, as `jnp.argmax`) at memory speed.
    """
    m = jnp.max(x, axis=-1, keepdims=True)
    idx = jnp.where(x == m, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1])
    return jnp.min(idx, axis=-1)


def sample_logits(logits: Array, rng: Array, sampler: Sampler, allowed: Array) -> Array:
    """Next tokens [B] from fp32 logits [B, V]; disallowed ids have probability exactly 0."""
    logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
    if sampler.greedy:
        return first_argmax(logits)
    logits = logits / sampler.temperature
    if sampler.top_k:
        kth = jax.lax.top_k(logits, sampler.top_k)[0][:, -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    # Nucleus: keep the smallest set of most likely ids whose probability reaches top_p (the
    # most likely id is always kept). With top_p >= 1 the threshold keeps everything.
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < sampler.top_p
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    # Gumbel-max, as `jax.random.categorical` computes it, with the fast argmax.
    return first_argmax(logits + jax.random.gumbel(rng, logits.shape, jnp.float32))


def is_stop(tokens: Array, stop_tokens: Array) -> Array:
    """tokens [B], stop_tokens [B, K] (-1 = unused slot) -> [B] bool."""
    return jnp.any(tokens[:, None] == stop_tokens, axis=-1)


def stop_token_array(
    stop_tokens: Sequence[int] | Sequence[Sequence[int]] | Array | None, batch: int
) -> Array:
    """Normalise stop tokens to [B, K] int32 padded with -1 (one list for all rows, or per row)."""
    if stop_tokens is None:
        return jnp.full((batch, 1), -1, jnp.int32)
    if isinstance(stop_tokens, (jax.Array, np.ndarray)):
        a = np.asarray(stop_tokens, np.int32)
        return jnp.asarray(np.broadcast_to(a, (batch, a.shape[-1])) if a.ndim == 1 else a)
    rows = list(stop_tokens)
    if rows and all(isinstance(r, (int, np.integer)) for r in rows):
        rows = [rows] * batch
    if len(rows) != batch:
        raise ValueError(f"{len(rows)} rows of stop tokens for a batch of {batch}")
    k = max(1, max(len(r) for r in rows))
    a = np.full((batch, k), -1, np.int32)
    for i, r in enumerate(rows):
        a[i, : len(r)] = r
    return jnp.asarray(a)


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------


def _check_prompt_mask(mask: np.ndarray) -> None:
    """Each row must hold one contiguous, non-empty run of real tokens (left or right padding)."""
    edges = np.diff(mask.astype(np.int8), axis=1, prepend=0, append=0)
    runs = (edges == 1).sum(axis=1)
    for i in np.flatnonzero(runs != 1):
        what = "is empty" if runs[i] == 0 else f"has {runs[i]} separate runs of tokens"
        raise ValueError(f"prompt row {i} {what}; each row needs one contiguous run")


def left_align(tokens: Array, mask: Array, pad_id: int = 0) -> tuple[Array, Array]:
    """Shift each row's contiguous run of real tokens to end at the last column."""
    P = tokens.shape[1]
    mask = mask.astype(bool)
    n = mask.sum(-1)
    first = jnp.argmax(mask, axis=-1)  # start of the run (0 when the row is empty)
    src = first[:, None] + jnp.arange(P)[None, :] - (P - n)[:, None]
    valid = jnp.arange(P)[None, :] >= (P - n)[:, None]
    out = jnp.take_along_axis(tokens, jnp.clip(src, 0, P - 1), axis=1)
    return jnp.where(valid, out, pad_id), valid


# --------------------------------------------------------------------------------------------
# Prefill and extend
# --------------------------------------------------------------------------------------------


def _prefill_hidden(
    model: GPTNeoX, tokens: Array, mask: Array, cache_len: int, pad_id: int, layers: Any = None
) -> tuple[Array, KVCache, Array]:
    """Last position's hidden state [B, D], the filled cache and each row's next position."""
    tokens, mask = left_align(tokens, mask, pad_id)
    B, P = tokens.shape
    n = mask.sum(-1).astype(jnp.int32)
    positions = jnp.maximum(jnp.arange(P, dtype=jnp.int32)[None, :] - (P - n)[:, None], 0)
    cache = KVCache.zeros(model.config, B, cache_len)
    cache = dataclasses.replace(
        cache,
        k=tuple(sharding.constrain(k, sharding.K_CACHE_AXES) for k in cache.k),
        v=tuple(sharding.constrain(v, sharding.V_CACHE_AXES) for v in cache.v),
    )
    hidden, cache = model.hidden_states(
        tokens, positions, mask.astype(jnp.int32), cache, layers=layers
    )
    return hidden[:, -1], cache, n


def _prefill(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    layers: tuple[dict[str, Array], ...] | None,
    tokens: Array,
    mask: Array,
    cache_len: int,
    pad_id: int,
) -> tuple[Array, KVCache, Array]:
    model = nnx.merge(graphdef, state)
    hidden, cache, n = _prefill_hidden(model, tokens, mask, cache_len, pad_id, layers)
    return model.logits(hidden), cache, n


def _extend(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    layers: tuple[dict[str, Array], ...] | None,
    tokens: Array,
    positions: Array,
    cache: KVCache,
) -> tuple[Array, KVCache]:
    model = nnx.merge(graphdef, state)
    seg = jnp.ones(tokens.shape, jnp.int32)
    hidden, cache = model.hidden_states(tokens, positions, seg, cache, layers=layers)
    return model.logits(hidden), cache


_prefill_jit = jax.jit(_prefill, static_argnames=("graphdef", "cache_len", "pad_id"))
_extend_jit = jax.jit(_extend, static_argnames=("graphdef",), donate_argnames=("cache",))


def prefill(
    model: GPTNeoX, tokens: Array, mask: Array | None = None, *, cache_len: int, pad_id: int = 0
) -> tuple[Array, KVCache, Array]:
    """Run padded prompts [B, P]. Returns (last logits [B, V], cache, next positions [B])."""
    if mask is None:
        mask = jnp.ones(tokens.shape, bool)
    if cache_len < tokens.shape[1]:
        raise ValueError(f"cache_len {cache_len} is shorter than the prompt ({tokens.shape[1]})")
    graphdef, state = nnx.split(model)
    # per-layer views where the weights allow (one CPU device): the unrolled layers slicing the
    # stack in the jit may hold a copy of every layer at once (measured: a 3B fp32 model's
    # prefill ran out of 23 GB)
    return _prefill_jit(
        graphdef,
        state,
        model.layer_views(),
        jnp.asarray(tokens),
        jnp.asarray(mask),
        cache_len=cache_len,
        pad_id=pad_id,
    )


def extend(
    model: GPTNeoX, tokens: Array, positions: Array, cache: KVCache
) -> tuple[Array, KVCache]:
    """Feed tokens [B, T] at positions [B, T]; returns logits [B, T, V]. `cache` is donated."""
    graphdef, state = nnx.split(model)
    return _extend_jit(graphdef, state, model.layer_views(), tokens, positions, cache)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def cache_phases(prompt_len: int, max_new_tokens: int, chunk: int) -> tuple[int, ...]:
    """Cache lengths of the decoding loop's phases: `chunk` more slots per phase.

    Why: a decoding step reads its whole cache buffer (masked slots included), so a cache sized
    for the last token makes every early step pay for it. Growing the buffer in phases halves
    the average read for long generations at the price of one compile of the loop body per
    phase. `chunk` 0 gives a single phase.
    """
    total = prompt_len + max_new_tokens
    if chunk <= 0:
        return (total,)
    return tuple(range(prompt_len + chunk, total, chunk)) + (total,)


def grow_cache(cache: KVCache, max_len: int) -> KVCache:
    """The same cache with room for `max_len` slots (new slots empty)."""
    extra = max_len - cache.max_len
    if extra < 0:
        raise ValueError(f"cannot shrink a cache of {cache.max_len} slots to {max_len}")
    return dataclasses.replace(
        cache,
        k=tuple(
            sharding.constrain(jnp.pad(k, ((0, 0), (0, 0), (0, extra))), sharding.K_CACHE_AXES)
            for k in cache.k
        ),
        v=tuple(
            sharding.constrain(jnp.pad(v, ((0, 0), (0, extra), (0, 0))), sharding.V_CACHE_AXES)
            for v in cache.v
        ),
        segment_ids=jnp.pad(cache.segment_ids, ((0, 0), (0, extra))),
    )


def _generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    layers: tuple[dict[str, Array], ...] | None,
    tokens: Array,
    mask: Array,
    stop_tokens: Array,
    allowed: Array,
    rng: Array,
    sampler: Sampler,
    max_new_tokens: int,
    pad_id: int,
    vocab_range: tuple[int, int] | None = None,
    cache_chunk: int = 0,
) -> GenerateOutput:
    B, P = tokens.shape
    lo = 0 if vocab_range is None else vocab_range[0]
    model = nnx.merge(graphdef, state)
    if layers is None:  # sliced once here, not at every step inside the loop
        layers = model.unstack_layers()
    phases = cache_phases(P, max_new_tokens, cache_chunk)
    hidden, cache, positions = _prefill_hidden(model, tokens, mask, phases[0], pad_id, layers)
    logits = model.logits(hidden, vocab_range)

    def pick(step: Array, logits: Array, done: Array) -> tuple[Array, Array]:
        tok = lo + sample_logits(logits, jax.random.fold_in(rng, step), sampler, allowed)
        tok = jnp.where(done, pad_id, tok)
        return tok, done | is_stop(tok, stop_tokens)

    first, done = pick(jnp.int32(0), logits, jnp.zeros((B,), bool))
    out = jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    lengths = jnp.ones((B,), jnp.int32)

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        step, out, last, positions, cache, done, lengths = carry
        hidden, cache = model.hidden_states(
            last[:, None], positions[:, None], jnp.ones((B, 1), jnp.int32), cache, layers=layers
        )
        tok, new_done = pick(step, model.logits(hidden[:, 0], vocab_range), done)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, step))
        lengths = lengths + (~done).astype(jnp.int32)
        return step + 1, out, tok, positions + 1, cache, new_done, lengths

    carry = (jnp.int32(1), out, first, positions, cache, done, lengths)
    for cache_len in phases:
        # step s feeds token s-1 into slot P+s-1: this phase's buffer holds steps < end
        end = min(max_new_tokens, cache_len - P + 1)

        def cond(carry: tuple[Any, ...], end: int = end) -> Array:
            step, _, _, _, _, done, _ = carry
            return (step < end) & ~jnp.all(done)

        c = carry
        carry = (*c[:4], grow_cache(c[4], cache_len), *c[5:])
        carry = jax.lax.while_loop(cond, body, carry)
    _, out, _, _, _, done, lengths = carry
    return GenerateOutput(tokens=out, lengths=lengths, stopped=done)


_generate_jit = jax.jit(
    _generate,
    static_argnames=("graphdef", "max_new_tokens", "pad_id", "vocab_range", "cache_chunk"),
)


def generate(
    model: GPTNeoX,
    prompt_tokens: Array | np.ndarray,
    prompt_mask: Array | np.ndarray | None = None,
    *,
    max_new_tokens: int,
    sampler: Sampler = GREEDY,
    stop_tokens: Sequence[int] | Sequence[Sequence[int]] | Array | None = None,
    token_mask: Array | np.ndarray | None = None,
    rng: Array | int = 0,
    pad_id: int = 0,
    vocab_range: tuple[int, int] | None = None,
    cache_chunk: int = 64,
) -> GenerateOutput:
    """Generate up to `max_new_tokens` for each prompt row.

    prompt_tokens [B, P] with prompt_mask [B, P] (True on real tokens; left or right padding);
    stop_tokens one list for all rows or a list per row; token_mask [V] or [B, V] of allowed ids
    (with `vocab_range`, a mask over the range's ids only). `vocab_range=(lo, hi)` restricts
    generation to ids lo..hi-1 and computes only their logits (image-constrained decoding).
    `cache_chunk` grows the KV cache by that many slots per phase of the loop (`cache_phases`;
    0: one buffer for the whole generation); the tokens do not depend on it.
    """
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    B, P = prompt_tokens.shape
    mask = jnp.ones((B, P), bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    if mask.shape != (B, P):
        raise ValueError(f"prompt_mask shape {mask.shape} differs from prompt_tokens {(B, P)}")
    _check_prompt_mask(np.asarray(mask))
    cfg = model.config
    positive_int(max_new_tokens, "max_new_tokens")
    if P + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt {P} + {max_new_tokens} new tokens exceed the model's "
            f"{cfg.max_position_embeddings} positions"
        )
    if not sampler.greedy and not sampler.temperature > 0:
        raise InputError("sampling needs temperature > 0 (use Sampler.argmax() for greedy)")
    if vocab_range is None:
        allowed = allowed_ids(cfg.vocab_size, cfg.padded_vocab_size, token_mask, B)
    else:
        lo, hi = (int(v) for v in vocab_range)
        if not 0 <= lo < hi <= cfg.vocab_size:
            raise ValueError(f"vocab_range {vocab_range} is not inside [0, {cfg.vocab_size})")
        vocab_range = (lo, hi)
        allowed = allowed_ids(hi - lo, hi - lo, token_mask, B)
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    graphdef, state = nnx.split(model)
    return _generate_jit(
        graphdef,
        state,
        model.layer_views(),
        prompt_tokens,
        mask,
        stop_token_array(stop_tokens, B),
        allowed,
        key,
        sampler,
        max_new_tokens=max_new_tokens,
        pad_id=pad_id,
        vocab_range=vocab_range,
        cache_chunk=max(int(cache_chunk), 0),
    )


# --------------------------------------------------------------------------------------------
# Streaming: one token at a time, to the host
# --------------------------------------------------------------------------------------------


def _unstack(graphdef: nnx.GraphDef, state: nnx.State) -> tuple[dict[str, Array], ...]:
    return nnx.merge(graphdef, state).unstack_layers()


def _stream_start(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    layers: Any,
    tokens: Array,
    mask: Array,
    allowed: Array,
    rng: Array,
    sampler: Sampler,
    cache_len: int,
    pad_id: int,
    vocab_range: tuple[int, int] | None,
) -> tuple[Array, Array, KVCache]:
    """Prefill and the first token, sampled as `_generate` samples its step 0."""
    model = nnx.merge(graphdef, state)
    hidden, cache, positions = _prefill_hidden(model, tokens, mask, cache_len, pad_id, layers)
    lo = 0 if vocab_range is None else vocab_range[0]
    logits = model.logits(hidden, vocab_range)
    tok = lo + sample_logits(logits, jax.random.fold_in(rng, 0), sampler, allowed)
    return tok, positions, cache


def _stream_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    layers: Any,
    last: Array,
    positions: Array,
    cache: KVCache,
    allowed: Array,
    rng: Array,
    step: Array,
    sampler: Sampler,
    vocab_range: tuple[int, int] | None,
) -> tuple[Array, Array, KVCache]:
    """Feed the last token, sample the next (as `_generate`'s loop body does at `step`)."""
    model = nnx.merge(graphdef, state)
    ones = jnp.ones((last.shape[0], 1), jnp.int32)
    hidden, cache = model.hidden_states(
        last[:, None], positions[:, None], ones, cache, layers=layers
    )
    lo = 0 if vocab_range is None else vocab_range[0]
    logits = model.logits(hidden[:, 0], vocab_range)
    tok = lo + sample_logits(logits, jax.random.fold_in(rng, step), sampler, allowed)
    return tok, positions + 1, cache


_unstack_jit = jax.jit(_unstack, static_argnames=("graphdef",))
_stream_start_jit = jax.jit(
    _stream_start, static_argnames=("graphdef", "cache_len", "pad_id", "vocab_range")
)
_stream_step_jit = jax.jit(
    _stream_step, static_argnames=("graphdef", "vocab_range"), donate_argnames=("cache",)
)


def stream(
    model: GPTNeoX,
    prompt: Sequence[int] | np.ndarray,
    *,
    max_new_tokens: int,
    sampler: Sampler = GREEDY,
    stop_tokens: Sequence[int] = (),
    token_mask: Array | np.ndarray | None = None,
    rng: Array | int = 0,
    pad_id: int = 0,
    vocab_range: tuple[int, int] | None = None,
    pad_to: int = 0,
) -> Iterator[int]:
    """Yield one prompt's new tokens one at a time, as they are sampled (for a UI that shows
    text while it is written, or a progress bar over an image's codes).

    Why not `generate`: its loop runs on the device and returns when the whole batch is done.
    Here every step is its own jitted call (the next one dispatched before the host reads the
    current token), so the host sees each token at once; for batches `generate` is faster.
    The tokens are the ones `generate` gives this prompt as a batch of one row with the same
    `rng` (same sampling stream per step); the stop token is yielded, then the stream ends.
    `pad_to` left-pads the prompt to that many positions, so that prompts of nearby lengths
    share one compiled program (the tokens do not depend on it).
    """
    ids = np.asarray(prompt, np.int32).reshape(-1)
    if not len(ids):
        raise ValueError("empty prompt")
    cfg = model.config
    positive_int(max_new_tokens, "max_new_tokens")
    P = max(len(ids), int(pad_to))
    if P + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt {P} + {max_new_tokens} new tokens exceed the model's "
            f"{cfg.max_position_embeddings} positions"
        )
    if not sampler.greedy and not sampler.temperature > 0:
        raise InputError("sampling needs temperature > 0 (use Sampler.argmax() for greedy)")
    if vocab_range is None:
        allowed = allowed_ids(cfg.vocab_size, cfg.padded_vocab_size, token_mask, 1)
    else:
        lo, hi = (int(v) for v in vocab_range)
        if not 0 <= lo < hi <= cfg.vocab_size:
            raise ValueError(f"vocab_range {vocab_range} is not inside [0, {cfg.vocab_size})")
        vocab_range = (lo, hi)
        allowed = allowed_ids(hi - lo, hi - lo, token_mask, 1)
    tokens = np.full((1, P), pad_id, np.int32)
    mask = np.zeros((1, P), bool)
    tokens[0, P - len(ids) :], mask[0, P - len(ids) :] = ids, True
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    stops = {int(t) for t in stop_tokens}
    # arguments are checked above, when `stream` is called; the work starts at the first next()
    return _stream_tokens(
        model, tokens, mask, allowed, key, sampler, stops, max_new_tokens, pad_id, vocab_range
    )


def _stream_tokens(
    model: GPTNeoX,
    tokens: np.ndarray,
    mask: np.ndarray,
    allowed: Array,
    key: Array,
    sampler: Sampler,
    stops: set[int],
    max_new_tokens: int,
    pad_id: int,
    vocab_range: tuple[int, int] | None,
) -> Iterator[int]:
    graphdef, state = nnx.split(model)
    layers = model.layer_views()
    if layers is None:
        layers = _unstack_jit(graphdef, state)
    tok, positions, cache = _stream_start_jit(
        graphdef,
        state,
        layers,
        jnp.asarray(tokens),
        jnp.asarray(mask),
        allowed,
        key,
        sampler,
        cache_len=tokens.shape[1] + max_new_tokens,
        pad_id=pad_id,
        vocab_range=vocab_range,
    )
    for step in range(1, max_new_tokens + 1):
        current = tok
        if step < max_new_tokens:  # dispatch the next step before waiting for this token
            tok, positions, cache = _stream_step_jit(
                graphdef,
                state,
                layers,
                current,
                positions,
                cache,
                allowed,
                key,
                jnp.int32(step),
                sampler,
                vocab_range=vocab_range,
            )
        t = int(current[0])
        yield t
        if t in stops:
            return
