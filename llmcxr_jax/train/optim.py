"""Optimizer and learning-rate schedule for LM finetuning.

LLM-CXR (DeepSpeed): AdamW, lr 5e-6, betas 0.9/0.999, eps 1e-8, weight decay 0, gradient clipping
1.0, WarmupLR for 50 steps then constant. DeepSpeed's WarmupLR warms up *logarithmically*:

    lr(t) = min_lr + (max_lr - min_lr) * log(t + 1) / log(warmup_steps)     for t < warmup_steps

(then max_lr). Linear warm-up and a cosine decay after warm-up are options.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax.numpy as jnp
import optax

from llmcxr_jax.errors import InputError

if TYPE_CHECKING:  # only named in hints: a config may be any attribute dict (no ml_collections)
    import ml_collections


def schedule(c: ml_collections.ConfigDict) -> optax.Schedule:
    """c: lr, min_lr, warmup_steps, warmup ("log" | "linear"), decay ("constant" | "cosine"),
    decay_steps (cosine: steps after warm-up to reach min_lr)."""
    lr, min_lr, warm = c.lr, c.get("min_lr", 0.0), int(c.warmup_steps)

    def warmup(t):
        if warm <= 1:
            return jnp.asarray(lr, jnp.float32)
        t = jnp.asarray(t, jnp.float32)
        if c.warmup == "log":
            frac = jnp.log(t + 1.0) / math.log(warm)
        elif c.warmup == "linear":
            frac = (t + 1.0) / warm
        else:
            raise InputError(f"warmup must be log or linear, got {c.warmup!r}")
        return min_lr + (lr - min_lr) * jnp.minimum(frac, 1.0)

    def after(t):
        if c.get("decay", "constant") == "constant":
            return jnp.asarray(lr, jnp.float32)
        if c.decay != "cosine":
            raise InputError(f"decay must be constant or cosine, got {c.decay!r}")
        steps = max(int(c.decay_steps), 1)
        progress = jnp.clip((jnp.asarray(t, jnp.float32) - warm) / steps, 0.0, 1.0)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + jnp.cos(jnp.pi * progress))

    return lambda t: jnp.where(t < warm, warmup(t), after(t))


def optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping (c: lr..., b1, b2, eps, weight_decay, clip)."""
    parts = []
    if c.get("clip", 0.0):
        parts.append(optax.clip_by_global_norm(c.clip))
    parts.append(optax.adamw(schedule(c), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay))
    return optax.chain(*parts)
