"""The multimodal vocabulary: LLM-CXR's id layout and resizing the embedding tables."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset
from llmcxr_jax.vocab import MultimodalVocab, resize_vocab


def test_llm_cxr_id_layout():
    v = MultimodalVocab()
    assert (v.size, v.padded_size, v.image_range) == (51305, 51328, (50281, 51305))
    np.testing.assert_array_equal(v.code_to_id([0, 1023]), [50281, 51304])
    np.testing.assert_array_equal(v.id_to_code([50281, 51304]), [0, 1023])
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        v.code_to_id([1024])
    with pytest.raises(ValueError, match="outside the image range"):
        v.id_to_code([50280])
    text, image, every = (v.allowed_mask(k) for k in ("text", "image", "all"))
    assert (text.sum(), image.sum(), every.sum()) == (50281, 1024, 51305)
    assert not (text & image).any() and len(every) == 51328


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
