"""The NNX GPT-NeoX against transformers' PyTorch GPTNeoXForCausalLM on the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import tiny_hf_model
from flax import nnx

from llmcxr_jax.convert.hf_gpt_neox import load_hf_model
from llmcxr_jax.models.gpt_neox import (
    GPTNeoX,
    GPTNeoXConfig,
    _project,
    abstract_model,
    count_params,
    get_preset,
)


def _to_jax(hf_model, tmp_path, **kw):
    hf_model.save_pretrained(tmp_path)
    return load_hf_model(tmp_path, **kw)


def _hf_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(torch.tensor(np.asarray(tokens))).logits.numpy()


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("rotary_pct", [0.25, 1.0])
def test_logits_match_transformers(tmp_path, parallel, rotary_pct):
    hf = tiny_hf_model(parallel=parallel, rotary_pct=rotary_pct)
    model = _to_jax(hf, tmp_path)
    tokens = np.random.default_rng(1).integers(0, 211, (3, 37))
    ours, _ = model(jnp.asarray(tokens))
    ref = _hf_logits(hf, tokens)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours)[..., :211], ref, atol=1e-4, rtol=0)


def test_scan_and_remat_give_the_same_logits(tmp_path):
    hf = tiny_hf_model(num_layers=3)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 211, (2, 16)))
    base = _to_jax(hf, tmp_path)
    ref, _ = base(tokens)
    for overrides in (
        {"scan_layers": True},
        {"remat_policy": "full"},
        {"scan_layers": True, "remat_policy": "dots"},
    ):
        model = nnx.merge(*nnx.split(base))
        model.config = base.config.replace(**overrides)
        out, _ = model(tokens)
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=str(overrides))


def test_packed_row_equals_segments_run_separately(tmp_path):
    model = _to_jax(tiny_hf_model(), tmp_path)
    rng = np.random.default_rng(3)
    lengths = [7, 12, 5]
    segs = [rng.integers(0, 211, n) for n in lengths]
    row = np.concatenate(segs + [np.zeros(4, int)])  # 4 padding tokens at the end
    seg_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(4)])
    pos = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(4)])
    packed, _ = model(
        jnp.asarray(row[None]),
        jnp.asarray(pos[None], jnp.int32),
        jnp.asarray(seg_ids[None], jnp.int32),
    )
    start = 0
    for s in segs:
        alone, _ = model(jnp.asarray(s[None]))
        np.testing.assert_allclose(packed[0, start : start + len(s)], alone[0], atol=1e-5)
        start += len(s)
    assert np.isfinite(np.asarray(packed)).all()  # padding rows attend to nothing, yet no NaN


@pytest.mark.parametrize("block", [5, 8, 36])
def test_attention_blocks_match_transformers(tmp_path, block):
    # query blocks that skip the keys after them: 37 tokens in blocks of 5 (a ragged last
    # block), 8, and 36 (one full block and one of a single row)
    hf = tiny_hf_model()
    model = _to_jax(hf, tmp_path)
    model.config = model.config.replace(attention_block=block)
    tokens = np.random.default_rng(1).integers(0, 211, (3, 37))
    ours, _ = model(jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(ours)[..., :211], _hf_logits(hf, tokens), atol=1e-4)


def test_attention_blocks_give_the_same_packed_logits_and_gradients(tmp_path):
    base = _to_jax(tiny_hf_model(), tmp_path)
    rng = np.random.default_rng(5)
    seg = np.array([[1] * 9 + [2] * 13 + [0] * 6, [1] * 20 + [0] * 8])  # padding at the end
    pos = np.concatenate([np.arange(9), np.arange(13), np.zeros(6)]), np.r_[np.arange(20), [0] * 8]
    tokens = jnp.asarray(rng.integers(0, 211, seg.shape))
    pos, seg = jnp.asarray(np.stack(pos), jnp.int32), jnp.asarray(seg, jnp.int32)
    targets = jnp.asarray(rng.integers(0, 211, seg.shape))

    def loss(params, graphdef):
        logits, _ = nnx.merge(graphdef, params)(tokens, pos, seg)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        return jnp.sum(ce * (seg > 0)), logits

    results = []
    for block in (0, 4, 7):
        model = nnx.merge(*nnx.split(base))
        model.config = base.config.replace(attention_block=block)
        graphdef, params = nnx.split(model)
        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params, graphdef)
        results.append((value, np.asarray(logits)[np.asarray(seg) > 0], grads))
    (v0, l0, g0), *others = results
    for v, logits, g in others:
        np.testing.assert_allclose(v, v0, rtol=1e-5)
        np.testing.assert_allclose(logits, l0, atol=1e-5)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_bf16_compute_keeps_fp32_params_and_stays_close(tmp_path):
    hf = tiny_hf_model()
    model = _to_jax(hf, tmp_path)
    tokens = np.random.default_rng(4).integers(0, 211, (2, 24))
    ref = _hf_logits(hf, tokens)
    model.config = model.config.replace(dtype="bfloat16")
    out, _ = model(jnp.asarray(tokens))
    assert out.dtype == jnp.float32 and model.embed_in[...].dtype == jnp.float32
    probs = jax.nn.softmax(out[..., :211])
    np.testing.assert_allclose(probs, jax.nn.softmax(jnp.asarray(ref)), atol=2e-2)


def test_dolly_preset_has_2_78b_parameters():
    cfg = get_preset("dolly-v2-3b")
    n = count_params(abstract_model(cfg))  # shapes only: nothing is allocated
    assert n == cfg.num_params()
    assert abs(n / 1e9 - 2.775) < 0.01, n  # dolly-v2-3b / Pythia-2.8B: about 2.78 B


def test_dolly_size_scanned_remat_forward_traces_without_allocating():
    cfg = get_preset(
        "dolly-v2-3b",
        vocab_size=51305,
        vocab_pad_multiple=128,
        dtype="bfloat16",
        scan_layers=True,
        remat_policy="dots_no_batch",
    )
    graphdef, state = nnx.split(abstract_model(cfg))
    tokens = jax.ShapeDtypeStruct((2, 2048), jnp.int32)
    out = jax.eval_shape(lambda s, t: nnx.merge(graphdef, s)(t)[0], state, tokens)
    assert out.shape == (2, 2048, 51328) and out.dtype == jnp.float32


def test_param_count_by_hand_on_tiny():
    cfg = GPTNeoXConfig(
        vocab_size=10,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        intermediate_size=16,
        rotary_pct=0.5,
    )
    # embed_in + embed_out 2*10*8, qkv 8*24+24, dense 8*8+8, mlp 8*16+16+16*8+8, 2 LNs 4*8,
    # final LN 2*8
    hand = 160 + 216 + 72 + 280 + 32 + 16
    assert count_params(GPTNeoX(cfg, rngs=nnx.Rngs(0))) == cfg.num_params() == hand


def test_padding_columns_are_masked():
    cfg = get_preset("tiny", vocab_size=200, vocab_pad_multiple=128)
    model = GPTNeoX(cfg, rngs=nnx.Rngs(0))
    assert model.embed_in.shape == (256, 64)
    logits, _ = model(jnp.zeros((1, 3), jnp.int32))
    assert (np.asarray(logits)[..., 200:] < -1e29).all()
    assert np.isfinite(np.asarray(logits)[..., :200]).all()


def test_vocab_slice_computes_only_those_columns():
    cfg = get_preset("tiny", vocab_size=200, vocab_pad_multiple=128)
    model = GPTNeoX(cfg, rngs=nnx.Rngs(0))
    hidden, _ = model.hidden_states(jnp.arange(6)[None])
    full = model.logits(hidden)
    part = model.logits(hidden, vocab_slice=(150, 256))  # crosses into the padding rows
    assert part.shape == (1, 6, 106)
    np.testing.assert_allclose(part[..., :50], full[..., 150:200], atol=1e-6)
    assert (np.asarray(part[..., 50:]) < -1e29).all()


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        GPTNeoXConfig(vocab_size=5, hidden_size=10, num_layers=1, num_heads=3, intermediate_size=4)
    with pytest.raises(ValueError, match="hidden_act"):
        get_preset("tiny", hidden_act="swishy")
    with pytest.raises(ValueError, match="attention_block -1"):
        get_preset("tiny", attention_block=-1)


@pytest.mark.parametrize("rows", [1, 16, 64, 65, 200])
def test_skinny_projection_equals_the_plain_product(rows):
    """`_project` (the transposed product of decoding at <= 64 rows) against float64 numpy,
    values and gradients."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 1, 24)).astype(np.float32)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    out = jax.jit(_project)(x, w)
    assert out.shape == (rows, 1, 40)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T.astype(np.float64), atol=1e-4)
    g = rng.standard_normal((rows, 1, 40)).astype(np.float32)
    gx, gw = jax.grad(lambda x, w: (_project(x, w) * g).sum(), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gx, g.astype(np.float64) @ w, atol=1e-4)
    np.testing.assert_allclose(gw, g.reshape(rows, 40).T @ x.reshape(rows, 24), atol=1e-3)
