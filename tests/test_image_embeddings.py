"""Image-token embeddings from the VQ-GAN codebook: the projection, the scale, the rows written."""

import jax
import numpy as np
import pytest
from flax import nnx

from llmcxr_jax import image_embeddings as ie
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset, params_of
from llmcxr_jax.tokenizer import MultimodalTokenizer

N_CODES = 64
TEXTS = ["Heart size normal. Lungs clear.", "Small left pleural effusion.", "No pneumothorax."]


def _codebook(n=N_CODES, d=16, seed=0):
    """Anisotropic and off-centre, so a per-dimension or per-row normalisation would show."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.2, 3.0, d)
    return (rng.standard_normal((n, d)) * scales + 5.0).astype(np.float32)


@pytest.fixture(scope="module")
def tok():
    return MultimodalTokenizer.train_bpe(TEXTS * 5, vocab_size=300, num_image_codes=N_CODES)


@pytest.fixture(scope="module")
def model(tok):
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, vocab_pad_multiple=128)
    return GPTNeoX(cfg, rngs=nnx.Rngs(0))


def test_projection_is_a_seeded_gaussian_with_variance_1_over_d():
    p = ie.projection(16, 4096, seed=3)
    assert p.shape == (16, 4096)
    np.testing.assert_array_equal(p, ie.projection(16, 4096, seed=3))
    assert not np.array_equal(p, ie.projection(16, 4096, seed=4))
    assert abs(p.mean()) < 0.01
    assert abs(p.var() * 16 - 1.0) < 0.03


def test_codebook_embeddings_is_the_centred_projection_scaled_to_std():
    cb = _codebook()
    out = ie.codebook_embeddings(cb, 96, std=0.02, seed=7)
    c = cb.astype(np.float64) - cb.astype(np.float64).mean(axis=0)
    y = c @ ie.projection(16, 96, seed=7)
    y *= 0.02 / y.std()
    assert out.shape == (N_CODES, 96) and out.dtype == np.float32
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-9)
    assert abs(out.std() - 0.02) < 1e-6
    assert abs(out.mean()) < 1e-6  # centred: no direction shared by every image token
    # the seed picks the projection
    assert not np.allclose(ie.codebook_embeddings(cb, 96, std=0.02, seed=8), out)


def test_pairwise_distance_ratios_are_preserved_for_a_wide_projection():
    cb = _codebook(n=48, d=16)
    out = ie.codebook_embeddings(cb, 4096, std=0.02, seed=0).astype(np.float64)
    i, j = np.triu_indices(48, 1)
    d_in = np.linalg.norm(cb[i] - cb[j], axis=1)
    d_out = np.linalg.norm(out[i] - out[j], axis=1)
    ratio = d_out / d_in
    ratio /= np.median(ratio)  # one common factor is allowed: the scale to std
    assert ratio.min() > 0.9 and ratio.max() < 1.1, (ratio.min(), ratio.max())

    # and the nearest neighbour of most codes is kept
    def nearest(x):
        dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
        np.fill_diagonal(dist, np.inf)
        return dist.argmin(axis=1)

    assert (nearest(cb) == nearest(out)).mean() > 0.9


def test_codebook_embeddings_rejects_a_degenerate_codebook():
    with pytest.raises(ValueError, match="all equal"):
        ie.codebook_embeddings(np.ones((8, 4)), 16, std=0.02, seed=0)


def test_init_image_rows_changes_only_the_image_code_rows(tok, model):
    before = jax.tree.map(np.asarray, params_of(model))
    cb = _codebook()
    after = ie.init_image_rows(before, tok, cb, seed=5, std=0.02)
    lo, hi = tok.text_vocab_size, tok.text_vocab_size + N_CODES
    assert (lo, hi) == tok.image_range and tok.image_begin_id < lo and tok.image_end_id < lo
    want = ie.codebook_embeddings(cb, model.config.hidden_size, std=0.02, seed=5)
    np.testing.assert_array_equal(after["embed_in"][lo:hi], want)
    np.testing.assert_array_equal(after["embed_in"][:lo], before["embed_in"][:lo])
    np.testing.assert_array_equal(after["embed_in"][hi:], before["embed_in"][hi:])  # padding
    flat_a = dict(jax.tree_util.tree_flatten_with_path(after)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(before)[0])
    assert flat_a.keys() == flat_b.keys()
    for k, v in flat_b.items():
        if jax.tree_util.keystr(k) != "['embed_in']":
            np.testing.assert_array_equal(flat_a[k], v, err_msg=jax.tree_util.keystr(k))
    assert not np.array_equal(before["embed_in"][lo:hi], want)  # the input was not written


def test_init_image_rows_on_a_model_measures_std_and_can_do_both_tables(tok, model):
    cb = _codebook()
    out = ie.init_image_rows(model, tok, cb, seed=1, rows=("embed_in", "embed_out"))
    assert isinstance(out, GPTNeoX)
    lo, hi = tok.image_range
    for name in ("embed_in", "embed_out"):
        old = np.asarray(getattr(model, name)[...])
        new = np.asarray(getattr(out, name)[...])
        want = ie.codebook_embeddings(cb, old.shape[1], std=float(old[:lo].std()), seed=1)
        np.testing.assert_allclose(new[lo:hi], want, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(new[:lo], old[:lo])
        np.testing.assert_array_equal(new[hi:], old[hi:])
    np.testing.assert_array_equal(
        np.asarray(out.final_layer_norm.scale[...]), np.asarray(model.final_layer_norm.scale[...])
    )


def test_a_codebook_of_another_size_is_refused(tok, model):
    with pytest.raises(ValueError, match=r"codebook has 32 entries .* 64 image codes"):
        ie.init_image_rows(model, tok, _codebook(n=32), seed=0)


def test_bad_rows_and_modes_are_refused(tok, model):
    with pytest.raises(ValueError, match="rows must name"):
        ie.init_image_rows(model, tok, _codebook(), seed=0, rows=("embed",))
    with pytest.raises(ValueError, match="init.image_embeddings must be one of"):
        ie.rows_for_mode("codebooks")
    assert ie.rows_for_mode("") == ()
    assert ie.rows_for_mode("codebook") == ("embed_in",)
    assert ie.rows_for_mode("codebook_both") == ("embed_in", "embed_out")
