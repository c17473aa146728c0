"""The multimodal vocabulary: text tokens, then the VQ-GAN image codes, then TPU padding.

LLM-CXR keeps GPT-NeoX unchanged and only grows its embedding tables: the text tokenizer has
50,281 entries (GPT-NeoX BPE, dolly's three special tokens and `### Response:\\n`), and image code
`c` of the 1,024-entry VQ-GAN codebook becomes token id `50281 + c`. We additionally pad the tables
to a multiple of 128 rows (TPU-friendly matmul tiles); the padding rows exist only in memory:
their logits are masked and they are dropped on export.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llmcxr_jax.models.gpt_neox import GPTNeoX, GPTNeoXConfig, model_from_params, params_of

TEXT_VOCAB_SIZE = 50281
NUM_IMAGE_CODES = 1024
MULTIMODAL_VOCAB_SIZE = TEXT_VOCAB_SIZE + NUM_IMAGE_CODES  # 51,305
TPU_PAD_MULTIPLE = 128


@dataclasses.dataclass(frozen=True)
class MultimodalVocab:
    """Where each kind of token lives in the id space."""

    text_size: int = TEXT_VOCAB_SIZE
    num_image_codes: int = NUM_IMAGE_CODES
    pad_multiple: int = TPU_PAD_MULTIPLE

    @property
    def size(self) -> int:
        return self.text_size + self.num_image_codes

    @property
    def padded_size(self) -> int:
        return -(-self.size // self.pad_multiple) * self.pad_multiple

    @property
    def image_range(self) -> tuple[int, int]:
        """[lo, hi) of image-code ids."""
        return self.text_size, self.size

    def code_to_id(self, codes):
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_image_codes):
            raise ValueError(
                f"image codes must lie in [0, {self.num_image_codes}); got min {codes.min()}, "
                f"max {codes.max()}"
            )
        return codes + self.text_size

    def id_to_code(self, ids):
        ids = np.asarray(ids)
        if ids.size and not self.is_image(ids).all():
            raise ValueError(f"ids outside the image range {self.image_range}")
        return ids - self.text_size

    def is_image(self, ids):
        lo, hi = self.image_range
        return (ids >= lo) & (ids < hi)

    def allowed_mask(self, kind: str) -> np.ndarray:
        """Boolean [padded_size] of ids a sampler may produce: "text", "image" or "all"."""
        ids = np.arange(self.padded_size)
        if kind == "text":
            return ids < self.text_size
        if kind == "image":
            return self.is_image(ids)
        if kind == "all":
            return ids < self.size
        raise ValueError(f"kind must be text, image or all; got {kind!r}")


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
        raise ValueError(f"resize_vocab only grows the vocabulary: {old} -> {new_vocab_size}")
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
