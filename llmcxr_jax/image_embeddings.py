"""Image-token embeddings initialised from the VQ-GAN codebook (`config.init.image_embeddings`).

LLM-CXR grows a text LM's vocabulary by the VQ-GAN's codes and draws the new embedding rows at
random (resize_vocab), so two codes whose codebook vectors are neighbours start as unrelated tokens
and the LM has to learn the codebook's geometry from the data (LLM-CXR issue #13 asks why). Here
the input embedding row of image code `c` (token id `tok.text_vocab_size + c`) can instead start
as a fixed random projection of codebook vector `c` to the LM's width: close codes then start
with close embeddings. The output embedding (`embed_out`) keeps its random rows unless asked.

    config.init.image_embeddings = "codebook"       # embed_in's image-code rows
    config.init.image_embeddings = "codebook_both"  # embed_in's and embed_out's
    config.init.vqgan = "path/to/vqgan/model"       # the VQ-GAN checkpoint whose codes are used

Only the rows of the codes are written: the image begin/end markers are the text tokens `<` and
`>` (tokenizer.py), and the padding rows past the vocabulary are never produced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from llmcxr_jax.errors import InputError
from llmcxr_jax.tokenizer import MultimodalTokenizer

# config.init.image_embeddings -> the embedding tables whose image-code rows are written
MODES: dict[str, tuple[str, ...]] = {
    "": (),
    "codebook": ("embed_in",),
    "codebook_both": ("embed_in", "embed_out"),
}
TABLES = ("embed_in", "embed_out")


def rows_for_mode(mode: str) -> tuple[str, ...]:
    """The tables a `config.init.image_embeddings` value initialises (() for "")."""
    if mode not in MODES:
        raise InputError(f"init.image_embeddings must be one of {sorted(MODES)}; got {mode!r}")
    return MODES[mode]


def projection(d: int, width: int, seed: int) -> np.ndarray:
    """The fixed projection P [d, width] (float64) of `codebook_embeddings`: N(0, 1/d) entries.

    Drawn with numpy's PCG64 from `seed`, so it is the same on every host and platform.
    """
    rng = np.random.default_rng(seed)
    return rng.standard_normal((d, width)) / np.sqrt(d)


def codebook_embeddings(
    codebook: np.ndarray | jax.Array, width: int, *, std: float, seed: int
) -> np.ndarray:
    """Embedding rows [n_embed, width] (float32) for the codes of `codebook` [n_embed, d].

    1. Centre: subtract the mean codebook vector. VQ-GAN codebooks sit off the origin; the
       common offset says nothing about which codes are alike, and kept, it would project to
       one direction shared by every image token and dominate their embeddings.
    2. Project with the fixed Gaussian P [d, width] of `projection` (N(0, 1/d) entries): by
       Johnson-Lindenstrauss a random Gaussian map preserves pairwise distances up to a
       common factor (sqrt(width / d) here) and a relative error ~ sqrt(2 / width) per pair,
       so neighbouring codes get neighbouring embeddings. It is fixed and seeded, not learnt:
       nothing is trained for it, and every host computes the same rows.
    3. Scale the whole result by one factor so its per-entry standard deviation is `std` (the
       LM's existing embedding rows', or its initializer's for a model trained from scratch):
       image tokens then enter the network at the scale its text tokens do. One factor for
       the whole matrix keeps the distance ratios of step 2 (a per-row or per-column scale
       would not).
    """
    cb = np.asarray(codebook, np.float64)
    if cb.ndim != 2:
        raise ValueError(f"codebook must be [n_embed, d]; got shape {cb.shape}")
    if std <= 0:
        raise ValueError(f"std must be positive; got {std}")
    centred = cb - cb.mean(axis=0, keepdims=True)
    projected = centred @ projection(cb.shape[1], width, seed)
    spread = projected.std()
    if not np.isfinite(spread) or spread == 0.0:
        raise ValueError("the codebook's vectors are all equal (or not finite): nothing to project")
    return (projected * (std / spread)).astype(np.float32)


def load_codebook(path: str | os.PathLike) -> np.ndarray:
    """The codebook [n_embed, embed_dim] (float32) of a VQ-GAN model checkpoint (train-vqgan's
    workdir/model). Only that array is read (an Orbax partial restore), not the whole model."""
    import orbax.checkpoint as ocp

    from llmcxr_jax import checkpoint

    config = checkpoint.load_config(path, expect="vqgan")
    want = (config.n_embed, config.embed_dim)
    params_dir = Path(checkpoint.absolute(path)) / checkpoint.PARAMS_DIR
    item = {"quantize": {"embedding": {"embedding": np.zeros(want, np.float32)}}}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(
                params_dir,
                args=ocp.args.PyTreeRestore(
                    item=item, restore_args=restore_args, partial_restore=True
                ),
            )
        codebook = np.asarray(restored["quantize"]["embedding"]["embedding"], np.float32)
    except Exception as e:  # orbax raises many types; one line naming the file
        raise checkpoint.read_error(params_dir, e) from e
    if codebook.shape != want:
        raise checkpoint.CheckpointError(
            f"{params_dir}: codebook of shape {codebook.shape}, its config says {want}"
        )
    return codebook


def _std(x: Any) -> float:
    if isinstance(x, np.ndarray):
        return float(np.std(x, dtype=np.float64))
    import jax.numpy as jnp

    return float(jnp.std(x.astype(jnp.float32)))  # on the devices: x may span several hosts


def init_image_rows(
    params_or_model: Any,
    tok: MultimodalTokenizer,
    codebook: np.ndarray | jax.Array,
    *,
    seed: int,
    rows: Sequence[str] = ("embed_in",),
    std: float | None = None,
) -> Any:
    """Write `codebook_embeddings` into the image-code rows of the embedding tables `rows`.

    `params_or_model` is a GPT-NeoX parameter tree (`params_of`'s dict, numpy or jax arrays)
    or a `GPTNeoX`; the same kind is returned, with only rows `tok.text_vocab_size ..
    tok.text_vocab_size + tok.num_image_codes` of the named tables changed (every other row
    and parameter is the same array or bit-identical). `std` is the scale of the new rows;
    None measures it per table as the standard deviation of that table's text rows (an
    imported LM's). Both tables use the same projection (seed).

    Numpy tables are written on the host; jax arrays with `.at[].set`, which keeps them on
    their devices (and works for arrays sharded over several hosts).
    """
    from llmcxr_jax.models.gpt_neox import GPTNeoX, model_from_params, params_of

    is_model = isinstance(params_or_model, GPTNeoX)
    params = dict(params_of(params_or_model) if is_model else params_or_model)
    rows = tuple(rows)
    bad = [r for r in rows if r not in TABLES]
    if bad or not rows:
        raise ValueError(f"rows must name some of {TABLES}; got {rows}")
    codebook = np.asarray(codebook)
    if codebook.ndim != 2 or codebook.shape[0] != tok.num_image_codes:
        raise InputError(
            f"the VQ-GAN codebook has {codebook.shape[0] if codebook.ndim else 0} entries "
            f"(shape {codebook.shape}) but the tokenizer has {tok.num_image_codes} image codes: "
            "use the VQ-GAN that encoded the training data"
        )
    if is_model and params_or_model.config.vocab_size != tok.vocab_size:
        raise InputError(
            f"the model's vocabulary ({params_or_model.config.vocab_size}) is not the "
            f"tokenizer's ({tok.vocab_size}): grow it first (gpt_neox.resize_vocab)"
        )
    lo, hi = tok.image_range
    for name in rows:
        table = params[name]
        if table.ndim != 2 or table.shape[0] < hi:
            raise ValueError(
                f"{name} has shape {table.shape}; the image codes need rows up to {hi}"
            )
        s = std if std is not None else _std(table[:lo])
        new = codebook_embeddings(codebook, table.shape[1], std=s, seed=seed)
        if isinstance(table, np.ndarray):
            table = table.copy()
            table[lo:hi] = new.astype(table.dtype)
        else:
            table = table.at[lo:hi].set(new.astype(table.dtype))
        params[name] = table
    if is_model:
        return model_from_params(params_or_model.config, params)
    return params
