"""Growing GPT-NeoX's embedding tables to the multimodal vocabulary (`gpt_neox.resize_vocab`);
the id layout itself is the tokenizer's (test_tokenizer.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset, resize_vocab


def test_resize_keeps_old_rows_adds_normal_rows_and_masks_padding():
    cfg = get_preset("tiny", vocab_size=100)
    model = GPTNeoX(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 100, (2, 9)))
    before, _ = model(tokens)
    big = resize_vocab(model, 1100, pad_multiple=128, rng=4)
    assert big.config.vocab_size == 1100 and big.embed_in.shape == (1152, 64)
    assert big.embed_out.shape == (1152, 64)
    after, _ = big(tokens)
    np.testing.assert_allclose(after[..., :100], before[..., :100], atol=1e-6)
    new_in = np.asarray(big.embed_in[100:1100])
    new_out = np.asarray(big.embed_out[100:1100])
    for rows in (new_in, new_out):
        assert abs(rows.std() - 0.02) < 0.001 and abs(rows.mean()) < 0.001
    assert not np.allclose(new_in, new_out)  # independent draws
    assert not np.asarray(big.embed_in[1100:]).any()
    assert (np.asarray(after[..., 1100:]) < -1e29).all()
    with pytest.raises(ValueError, match="only grows"):
        resize_vocab(big, 50)
