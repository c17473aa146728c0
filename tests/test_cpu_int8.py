"""The int8 CPU path (cpu_int8): its fp32 twin equals the JAX model, int8 stays close, decoding
keeps `decode.generate`'s contract, and every way of loading gives the same model."""

import numpy as np
import pytest
from flax import nnx

from llmcxr_jax import checkpoint, cpu_int8, decode
from llmcxr_jax.convert.hf_gpt_neox import export_hf
from llmcxr_jax.errors import InputError
from llmcxr_jax.generate import Generator
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset, params_of

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    cfg = get_preset("tiny", vocab_size=VOCAB, vocab_pad_multiple=128)
    return GPTNeoX(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def fp32(model):
    return cpu_int8.Int8GPTNeoX.from_model(model, quantize=False)


@pytest.fixture(scope="module")
def int8(model):
    return cpu_int8.Int8GPTNeoX.from_model(model)


def _batch(seed=0, B=3, P=12):
    """Left-padded prompts of lengths P, P-4 and P-7 (padding id 0)."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(1, VOCAB, (B, P)).astype(np.int32)
    mask = np.ones((B, P), bool)
    mask[1, :4] = mask[2, :7] = False
    toks[~mask] = 0
    return toks, mask


def test_fp32_twin_gives_the_jax_models_logits(model, fp32):
    toks, mask = _batch()
    ref = np.asarray(decode.prefill(model, toks, mask, cache_len=12, pad_id=0)[0])
    got = fp32.prefill_logits(toks, mask)
    assert got.shape == ref.shape == (3, model.config.padded_vocab_size)
    np.testing.assert_allclose(got[:, :VOCAB], ref[:, :VOCAB], atol=1e-5)
    assert np.all(np.isneginf(got[:, VOCAB:]))  # padding ids can never come
    every = np.asarray(model(toks[:1])[0])[0, :, :VOCAB]
    np.testing.assert_allclose(fp32.logits(toks[:1])[0], every, atol=1e-5)
    # prompts without padding take the causal attention path (no mask built)
    full = np.ones(toks.shape, bool)
    ref = np.asarray(decode.prefill(model, toks, full, cache_len=12, pad_id=0)[0])[:, :VOCAB]
    np.testing.assert_allclose(fp32.prefill_logits(toks, full)[:, :VOCAB], ref, atol=1e-5)


@pytest.mark.parametrize("vocab_range", [None, (200, 264)])
def test_fp32_twin_generates_the_jax_models_greedy_tokens(model, fp32, vocab_range):
    toks, mask = _batch(1)
    kw = dict(max_new_tokens=16, pad_id=0, vocab_range=vocab_range)
    if vocab_range is None:
        kw["stop_tokens"] = [[7, 11], [5], [-1]]  # per row, as decode.generate takes them
        kw["token_mask"] = np.arange(model.config.padded_vocab_size) % 3 != 0
    ref = decode.generate(model, toks, mask, **kw)
    got = fp32.generate(toks, mask, **kw)
    np.testing.assert_array_equal(got.tokens, np.asarray(ref.tokens))
    np.testing.assert_array_equal(got.lengths, np.asarray(ref.lengths))
    np.testing.assert_array_equal(got.stopped, np.asarray(ref.stopped))
    if vocab_range is not None:
        assert got.tokens.min() >= 200 and got.tokens.max() < 264
        assert (got.lengths == 16).all()  # exactly h*w codes: no stop inside the image range
    else:
        assert (got.tokens[got.tokens != 0] % 3 != 0).all()


def test_int8_rows_round_to_half_a_step():
    """Per-row symmetric int8: every weight within half a quantisation step of its value."""
    w = np.random.default_rng(0).standard_normal((40, 24)).astype(np.float32)
    w[3] = 0.0  # an all-zero row must not divide by zero
    q = cpu_int8.QuantizedRows(w)
    step = np.abs(w).max(axis=1) / 127
    err = np.abs(q.dequantized() - w)
    assert (err <= step[:, None] / 2 + 1e-7).all()
    assert np.abs(q.q.numpy()).max() == 127 and (q.q.numpy()[3] == 0).all()
    x = np.random.default_rng(1).standard_normal((2, 24)).astype(np.float32)
    import torch

    y = q.linear()(torch.from_numpy(x)).numpy()
    ref = x @ q.dequantized().T  # only the activations' dynamic quantisation differs
    assert np.abs(y - ref).max() < 0.02 * np.abs(ref).max()


def test_int8_logits_close_to_fp32(model, int8):
    toks, mask = _batch(2)
    ref = np.asarray(decode.prefill(model, toks, mask, cache_len=12, pad_id=0)[0])[:, :VOCAB]
    got = int8.prefill_logits(toks, mask)[:, :VOCAB]
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert 0 < rel < 0.1  # int8 is not fp32, but close (random tiny model: the worst case)
    assert int8.weight_bytes() * 4 == cpu_int8.Int8GPTNeoX(model.config, False).weight_bytes()


def test_int8_without_a_parallel_residual_stays_close():
    cfg = get_preset("tiny", vocab_size=VOCAB, use_parallel_residual=False)
    seq = GPTNeoX(cfg, rngs=nnx.Rngs(1))
    int8 = cpu_int8.Int8GPTNeoX.from_model(seq)
    toks, mask = _batch(5)
    ref = np.asarray(decode.prefill(seq, toks, mask, cache_len=12, pad_id=0)[0])[:, :VOCAB]
    got = int8.prefill_logits(toks, mask)[:, :VOCAB]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_sampling_follows_the_sampler(int8):
    toks, mask = _batch(3)
    greedy = int8.generate(toks, mask, max_new_tokens=10)
    tiny_p = int8.generate(toks, mask, max_new_tokens=10, sampler=decode.Sampler(top_p=1e-6))
    np.testing.assert_array_equal(tiny_p.tokens, greedy.tokens)  # only the top id survives
    s = decode.Sampler(top_p=0.9, temperature=1.5)
    a = int8.generate(toks, mask, max_new_tokens=10, sampler=s, rng=4)
    b = int8.generate(toks, mask, max_new_tokens=10, sampler=s, rng=4)
    c = int8.generate(toks, mask, max_new_tokens=10, sampler=s, rng=5)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    k1 = int8.generate(toks, mask, max_new_tokens=10, sampler=decode.Sampler(top_k=1), rng=9)
    np.testing.assert_array_equal(k1.tokens, greedy.tokens)
    with pytest.raises(InputError, match="temperature"):
        int8.generate(toks, mask, max_new_tokens=2, sampler=decode.Sampler(temperature=0.0))


def test_stream_yields_what_generate_gives_one_row(int8):
    toks, _ = _batch(4)
    row = toks[:1]
    batch = int8.generate(row, max_new_tokens=12, stop_tokens=[9])
    streamed = list(int8.stream(row[0], max_new_tokens=12, stop_tokens=[9]))
    n = int(batch.lengths[0])
    assert streamed == batch.tokens[0, :n].tolist()


def test_checkpoint_and_hf_directory_load_the_same_model(model, int8, tmp_path):
    checkpoint.save_model(tmp_path / "ckpt", model)
    export_hf(model.config, params_of(model), tmp_path / "hf")
    toks, mask = _batch(5)
    want = int8.prefill_logits(toks, mask)[:, :VOCAB]
    for loaded in (
        cpu_int8.load(tmp_path / "ckpt"),  # one parameter at a time from Orbax
        cpu_int8.load(tmp_path / "hf"),  # lazily from safetensors (vocabulary unpadded)
    ):
        np.testing.assert_array_equal(loaded.prefill_logits(toks, mask)[:, :VOCAB], want)


def test_checkpoint_is_read_one_layer_at_a_time_and_older_ones_whole(
    model, int8, tmp_path, monkeypatch
):
    """New checkpoints store a chunk per layer and the int8 load reads them layer by layer;
    one written with Orbax's default chunks (no `layer_chunked`) is read a leaf at a time; both
    give the model built from memory."""
    read = []
    real_read_layers = checkpoint.read_layers

    def counting(path, key_path):
        layers = real_read_layers(path, key_path)
        read.append(layers is not None)
        return layers

    monkeypatch.setattr(checkpoint, "read_layers", counting)
    checkpoint.save_model(tmp_path / "chunked", model)
    monkeypatch.setattr(checkpoint, "layer_chunked", lambda params: None)
    checkpoint.save_model(tmp_path / "whole", model)
    toks, mask = _batch(6)
    want = int8.prefill_logits(toks, mask)
    for name, per_layer in (("chunked", True), ("whole", False)):
        read.clear()
        got = cpu_int8.load(tmp_path / name).prefill_logits(toks, mask)
        np.testing.assert_array_equal(got, want)
        assert read and all(r is per_layer for r in read), (name, read)
        # chunked: layer after layer (a weight never waits for its bias across all layers);
        # whole: one parameter, all its layers, after another
        keys = [k for k, _ in cpu_int8._checkpoint_tensors(tmp_path / name, model.config)]
        layer_of = [int(k.split(".")[2]) for k in keys if k.startswith("gpt_neox.layers.")]
        assert (layer_of == sorted(layer_of)) is per_layer, (name, layer_of)


def test_damaged_checkpoint_is_one_line_naming_it(model, tmp_path):
    checkpoint.save_model(tmp_path / "ckpt", model)
    for f in (tmp_path / "ckpt" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "ckpt")) as e:
        cpu_int8.load(tmp_path / "ckpt")
    assert len(str(e.value).splitlines()) == 1 and "tensorstore" not in str(e.value).lower()


def test_incomplete_weights_are_one_clear_error(model):
    from llmcxr_jax.convert.hf_gpt_neox import hf_tensors

    tensors = [
        (k, t)
        for k, t in hf_tensors(model.config, params_of(model))
        if k != "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"
    ]
    with pytest.raises(InputError, match="missing layer 1 mlp_out"):
        cpu_int8.Int8GPTNeoX.from_tensors(model.config, tensors)
    with pytest.raises(InputError, match="unexpected tensor"):
        cpu_int8.Int8GPTNeoX.from_tensors(model.config, [("gpt_neox.foo", np.zeros(2))])


def test_generator_runs_every_task_on_the_int8_model(tmp_path):
    """`Generator.load(..., quantize="int8")`: the three tasks and p(yes) through the int8 LM."""
    from llmcxr_jax.data import instructions
    from llmcxr_jax.models.vqgan import VQGAN
    from llmcxr_jax.models.vqgan import get_preset as vq_preset
    from llmcxr_jax.tokenizer import MultimodalTokenizer

    vq = VQGAN(vq_preset("tiny"), rngs=nnx.Rngs(0))
    texts = ["No pleural effusion.", "Mild cardiomegaly."] * 4
    texts += list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR) + [instructions.INTRO]
    tok = MultimodalTokenizer.train_bpe(texts, vocab_size=300, num_image_codes=vq.config.n_embed)
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, vocab_pad_multiple=128)
    lm = GPTNeoX(cfg, rngs=nnx.Rngs(1))
    checkpoint.save_model(tmp_path / "lm", lm)
    tok.save(tmp_path / "lm" / "tokenizer")
    checkpoint.save_model(tmp_path / "vq", vq)
    gen = Generator.load(tmp_path / "lm", tmp_path / "vq", batch_size=2, quantize="int8")
    ref = Generator(lm, tok, vq, batch_size=2)
    assert gen.quantized and not ref.quantized
    codes = [np.random.default_rng(i).integers(0, 16, gen.num_codes) for i in range(3)]
    reports = gen.reports(codes, max_new_tokens=8, seed=1)
    assert not reports.failures and all(isinstance(r, str) for r in reports.values)
    films = gen.images(["Mild cardiomegaly.", ""], seed=2)
    assert films.values[0].shape == (gen.num_codes,) and films.failures[0].index == 1
    q = ["Is there a pleural effusion?"] * 3
    assert len(gen.answers(codes, q, max_new_tokens=4).values) == 3
    p8, p32 = gen.answer_probabilities(codes, q), ref.answer_probabilities(codes, q)
    np.testing.assert_allclose(np.stack(p8.values), np.stack(p32.values), atol=0.05)
    streamed = list(gen.stream_image("Mild cardiomegaly.", seed=2))
    assert len(streamed) == gen.num_codes and min(streamed) >= 0
    with pytest.raises(InputError, match="quantize"):
        Generator.load(tmp_path / "lm", tmp_path / "vq", quantize="int4")


@pytest.mark.parametrize("candidates", [256, 2])  # 2: the wider nuclei are sought whole
def test_nucleus_samples_in_proportion(candidates, monkeypatch):
    """The pick inside the nucleus follows the renormalised probabilities (20,000 draws), also
    when the nucleus is wider than the top candidates and the ids are not in sorted order."""
    import torch

    monkeypatch.setattr(cpu_int8, "NUCLEUS_CANDIDATES", candidates)
    order = np.array([3, 0, 4, 1, 2])  # id order[i] is the i-th most likely
    by_rank = np.array([2.0, 1.0, 0.5, 0.0, -1.0])
    logits = torch.zeros(1, 5)
    logits[0, order] = torch.from_numpy(by_rank).float()
    allowed = torch.ones_like(logits, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    p = np.exp(by_rank) / np.exp(by_rank).sum()
    for top_p in (0.6, 0.9, 1.0):
        keep = int(((np.cumsum(p) - p) < top_p).sum())
        want = np.zeros(5)
        want[order[:keep]] = p[:keep] / p[:keep].sum()
        sampler = decode.Sampler(top_p=top_p)
        draws = [int(cpu_int8._pick(logits, allowed, sampler, gen)) for _ in range(20000)]
        got = np.bincount(draws, minlength=5) / len(draws)
        np.testing.assert_allclose(got, want, atol=0.015)
