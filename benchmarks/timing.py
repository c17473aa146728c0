"""What every benchmark here shares: median wall time of repeated runs after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def seconds(fn: Callable[[], object], reps: int, *, warmup: bool = True) -> list[float]:
    """Wall times of `reps` calls of `fn` (after one untimed call: compilation, caches)."""
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median_seconds(fn: Callable[[], object], reps: int, *, warmup: bool = True) -> float:
    """Median wall time of `reps` calls of `fn` (after one untimed call)."""
    return statistics.median(seconds(fn, reps, warmup=warmup))


def bench_gpt_neox_config(layers: int = 6, vocab_size: int = 51305):
    """The benchmarks' GPT-NeoX: hidden 512, 8 heads, MLP 2048, dolly's rotary 0.25."""
    import transformers

    return transformers.GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=512,
        num_hidden_layers=layers,
        num_attention_heads=8,
        intermediate_size=2048,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=0,
    )
