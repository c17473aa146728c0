"""KV-cache decoding: against transformers' generate, against the full forward, and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import tiny_hf_model
from flax import nnx

from llmcxr_jax import decode
from llmcxr_jax.convert.hf_gpt_neox import load_hf_model
from llmcxr_jax.decode import GREEDY, Sampler, generate, sample_logits
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    hf = tiny_hf_model(num_layers=3, vocab_size=211)
    d = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(d)
    return hf, load_hf_model(d, vocab_pad_multiple=128)


@pytest.mark.parametrize("cache_chunk", [0, 5])
def test_greedy_32_tokens_equal_transformers_generate(hf_and_ours, cache_chunk):
    hf, model = hf_and_ours
    prompts = np.random.default_rng(0).integers(1, 211, (3, 11))
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor(prompts),
            do_sample=False,
            max_new_tokens=32,
            min_new_tokens=32,
            use_cache=True,
        ).numpy()[:, 11:]
    out = generate(model, prompts, max_new_tokens=32, cache_chunk=cache_chunk)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert (np.asarray(out.lengths) == 32).all() and not np.asarray(out.stopped).any()


def test_cached_steps_equal_full_forward(hf_and_ours):
    _, model = hf_and_ours
    seq = jnp.asarray(np.random.default_rng(1).integers(0, 211, (2, 18)))
    full, _ = model(seq)
    logits, cache, pos = decode.prefill(model, seq[:, :10], cache_len=24)
    np.testing.assert_allclose(logits, full[:, 9], atol=1e-5)
    for t in range(10, 18):
        step, cache = decode.extend(model, seq[:, t : t + 1], pos[:, None], cache)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5, err_msg=f"step {t}")
        pos = pos + 1
    assert int(cache.index) == 18


def test_extend_donates_the_cache(hf_and_ours):
    _, model = hf_and_ours
    seq = jnp.ones((1, 4), jnp.int32)
    _, cache, pos = decode.prefill(model, seq, cache_len=8)
    old_k = cache.k
    _, cache = decode.extend(model, seq[:, :1], pos[:, None], cache)
    assert all(k.is_deleted() for k in old_k)  # updated in place, not copied


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_rows_run_alone(hf_and_ours, side):
    _, model = hf_and_ours
    rng = np.random.default_rng(2)
    rows = [rng.integers(1, 211, n) for n in (5, 9, 7)]
    P = 9
    tokens = np.zeros((3, P), np.int32)
    mask = np.zeros((3, P), bool)
    for i, r in enumerate(rows):
        sl = slice(P - len(r), P) if side == "left" else slice(0, len(r))
        tokens[i, sl], mask[i, sl] = r, True
    batched = generate(model, tokens, mask, max_new_tokens=12)
    for i, r in enumerate(rows):
        alone = generate(model, r[None], max_new_tokens=12)
        np.testing.assert_array_equal(batched.tokens[i], alone.tokens[0], err_msg=f"row {i}")


def test_per_row_stop_tokens(hf_and_ours):
    _, model = hf_and_ours
    prompts = np.random.default_rng(3).integers(1, 211, (2, 6))
    free = np.asarray(generate(model, prompts, max_new_tokens=16).tokens)
    stop0, stop1 = int(free[0, 4]), int(free[1, 9])
    k0 = list(free[0]).index(stop0)  # first occurrence
    k1 = list(free[1]).index(stop1)
    out = generate(
        model, prompts, max_new_tokens=16, stop_tokens=[[stop0], [stop1, 10_000]], pad_id=0
    )
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert list(lengths) == [k0 + 1, k1 + 1]
    np.testing.assert_array_equal(tokens[0, : k0 + 1], free[0, : k0 + 1])
    assert (tokens[0, k0 + 1 :] == 0).all() and (tokens[1, k1 + 1 :] == 0).all()
    assert np.asarray(out.stopped).all()


@pytest.mark.parametrize("sampler", [GREEDY, Sampler(temperature=1.5, top_p=0.9)])
def test_stream_yields_what_generate_gives_one_row(hf_and_ours, sampler):
    """Token by token on the host, the same tokens as the on-device loop for a batch of one,
    whatever the left padding; the stop token ends the stream."""
    _, model = hf_and_ours
    prompt = np.random.default_rng(6).integers(1, 211, 9)
    free = np.asarray(
        generate(model, prompt[None], max_new_tokens=20, sampler=sampler, rng=3).tokens
    )
    got = list(decode.stream(model, prompt, max_new_tokens=20, sampler=sampler, rng=3, pad_to=16))
    assert got == list(free[0])
    stop = int(free[0, 6])
    k = list(free[0]).index(stop)
    got = decode.stream(
        model, prompt, max_new_tokens=20, sampler=sampler, rng=3, stop_tokens=[stop]
    )
    assert list(got) == list(free[0, : k + 1])


def test_stream_checks_its_arguments_when_called(hf_and_ours):
    _, model = hf_and_ours
    with pytest.raises(ValueError, match="exceed"):
        decode.stream(model, np.ones(200, int), max_new_tokens=100)
    with pytest.raises(ValueError, match="temperature"):
        decode.stream(model, [1, 2], max_new_tokens=2, sampler=Sampler(temperature=0))
    with pytest.raises(ValueError, match="empty prompt"):
        decode.stream(model, [], max_new_tokens=2)


def test_cache_phases_by_hand():
    assert decode.cache_phases(10, 20, 8) == (18, 26, 30)
    assert decode.cache_phases(10, 16, 8) == (18, 26)
    assert decode.cache_phases(10, 20, 0) == (30,)
    assert decode.cache_phases(10, 1, 64) == (11,)


def test_growing_the_cache_in_phases_changes_no_token(hf_and_ours):
    """Phases of 3 and 7 slots against one buffer: greedy and sampled, left-padded prompts,
    rows stopping in different phases."""
    _, model = hf_and_ours
    rng = np.random.default_rng(11)
    prompts = rng.integers(1, 211, (3, 8))
    mask = np.ones((3, 8), bool)
    mask[1, :3] = False
    free = np.asarray(generate(model, prompts, mask, max_new_tokens=20, cache_chunk=0).tokens)
    stops = [[int(free[0, 4])], [int(free[1, 13])], [10_000]]
    for sampler, seed in ((GREEDY, 0), (Sampler(temperature=1.5, top_p=0.9), 4)):
        runs = [
            generate(
                model,
                prompts,
                mask,
                max_new_tokens=20,
                sampler=sampler,
                stop_tokens=stops,
                rng=seed,
                cache_chunk=chunk,
            )
            for chunk in (0, 3, 7)
        ]
        for run in runs[1:]:
            np.testing.assert_array_equal(np.asarray(run.tokens), np.asarray(runs[0].tokens))
            np.testing.assert_array_equal(np.asarray(run.lengths), np.asarray(runs[0].lengths))
            np.testing.assert_array_equal(np.asarray(run.stopped), np.asarray(runs[0].stopped))
        if sampler is GREEDY:  # rows 0 and 1 stop in the first and a later phase of 3 slots
            expect = [list(free[0]).index(stops[0][0]) + 1, list(free[1]).index(stops[1][0]) + 1]
            assert list(np.asarray(runs[0].lengths)) == [*expect, 20]
            assert list(np.asarray(runs[0].stopped)) == [True, True, False]
    _, cache, _ = decode.prefill(model, prompts, cache_len=10)
    with pytest.raises(ValueError, match="cannot shrink a cache of 10 slots to 9"):
        decode.grow_cache(cache, 9)


def test_token_mask_restricts_every_token(hf_and_ours):
    _, model = hf_and_ours
    prompts = np.random.default_rng(4).integers(1, 211, (2, 5))
    allowed = np.zeros(211, bool)
    allowed[50:60] = True
    for sampler in (GREEDY, Sampler(temperature=1.5)):
        out = np.asarray(
            generate(
                model, prompts, max_new_tokens=20, sampler=sampler, token_mask=allowed, rng=1
            ).tokens
        )
        assert ((out >= 50) & (out < 60)).all()
    per_row = np.zeros((2, 211), bool)
    per_row[0, :100], per_row[1, 100:] = True, True
    out = np.asarray(
        generate(
            model, prompts, max_new_tokens=20, sampler=Sampler(), token_mask=per_row, rng=2
        ).tokens
    )
    assert (out[0] < 100).all() and (out[1] >= 100).all() and (out[1] < 211).all()


def test_sampling_seeds_and_degenerate_samplers(hf_and_ours):
    _, model = hf_and_ours
    prompts = np.random.default_rng(5).integers(1, 211, (2, 5))
    run = lambda s, seed: np.asarray(
        generate(model, prompts, max_new_tokens=16, sampler=s, rng=seed).tokens
    )
    hot = Sampler(temperature=2.0)
    np.testing.assert_array_equal(run(hot, 7), run(hot, 7))
    assert (run(hot, 7) != run(hot, 8)).any()
    greedy = run(GREEDY, 0)
    np.testing.assert_array_equal(run(Sampler(top_k=1), 3), greedy)
    np.testing.assert_array_equal(run(Sampler(top_p=1e-6), 3), greedy)


def test_top_k_and_top_p_sets_computed_by_hand():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.asarray(np.log(probs)[None].repeat(4000, 0), jnp.float32)
    allowed = jnp.ones((4000, 4), bool)
    key = jax.random.key(0)
    # top-p 0.7: mass before each id is 0, .5, .8, .95 -> ids {0, 1} kept, renormalised .625/.375
    got = np.asarray(sample_logits(logits, key, Sampler(top_p=0.7), allowed))
    assert set(got) == {0, 1}
    assert abs((got == 0).mean() - 0.625) < 0.03
    # top-k 3: id 3 never; the rest in proportion .5/.3/.15 renormalised
    got = np.asarray(sample_logits(logits, key, Sampler(top_k=3), allowed))
    assert set(got) == {0, 1, 2}
    assert abs((got == 2).mean() - 0.15 / 0.95) < 0.03
    # temperature 0.5 squares the odds: p ~ [.25, .09, .0225, .0025]
    got = np.asarray(sample_logits(logits, key, Sampler(temperature=0.5), allowed))
    assert abs((got == 0).mean() - 0.25 / 0.365) < 0.03
    # a disallowed id is never produced, even the most likely one
    got = np.asarray(sample_logits(logits, key, Sampler(), allowed.at[:, 0].set(False)))
    assert 0 not in set(got)


def test_padding_vocab_rows_never_generated():
    cfg = get_preset("tiny", vocab_size=130, vocab_pad_multiple=128)  # 126 padding rows
    model = GPTNeoX(cfg, rngs=nnx.Rngs(0))
    # make a padding row the most attractive output by far
    model.embed_out[...] = model.embed_out[...].at[200].set(50.0)
    out = np.asarray(
        generate(
            model, np.ones((2, 3), int), max_new_tokens=20, sampler=Sampler(temperature=3.0), rng=0
        ).tokens
    )
    assert (out < 130).all()


def test_scanned_layers_decode_the_same(hf_and_ours):
    _, model = hf_and_ours
    prompts = np.random.default_rng(6).integers(1, 211, (2, 7))
    ref = generate(model, prompts, max_new_tokens=10).tokens
    scanned = nnx.merge(*nnx.split(model))
    scanned.config = model.config.replace(scan_layers=True)
    np.testing.assert_array_equal(generate(scanned, prompts, max_new_tokens=10).tokens, ref)


def test_bad_arguments_are_explained(hf_and_ours):
    _, model = hf_and_ours
    with pytest.raises(ValueError, match="exceed"):
        generate(model, np.ones((1, 200), int), max_new_tokens=100)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, np.ones((1, 3), int), max_new_tokens=2, sampler=Sampler(temperature=0))
    with pytest.raises(ValueError, match="prompt_mask"):
        generate(model, np.ones((1, 3), int), np.ones((1, 4), bool), max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt row 1 is empty"):
        generate(model, np.ones((2, 3), int), [[1, 1, 1], [0, 0, 0]], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt row 0 has 2 separate runs"):
        generate(model, np.ones((1, 4), int), [[1, 0, 1, 1]], max_new_tokens=2)


def test_layer_views_alias_the_stacked_weights_and_decode_the_same(hf_and_ours):
    """On one CPU device the decoding loop's per-layer buffers are the stacked weights
    themselves (a 3B fp32 model must fit once, not twice), and the tokens equal those of
    per-layer copies sliced inside the jitted loop."""
    _, model = hf_and_ours
    views = model.layer_views()
    stacked = model.layers.attention.qkv_kernel[...]
    layer_bytes = stacked[0].size * stacked.dtype.itemsize
    for i, layer in enumerate(views):
        offset = layer["qkv_kernel"].unsafe_buffer_pointer() - stacked.unsafe_buffer_pointer()
        assert offset == i * layer_bytes
        np.testing.assert_array_equal(layer["qkv_kernel"], stacked[i])
    prompts = jnp.asarray(np.random.default_rng(3).integers(1, 211, (2, 7)))
    sampler = Sampler(temperature=1.2, top_p=0.9)
    graphdef, state = nnx.split(model)
    args = (prompts, jnp.ones(prompts.shape, bool), decode.stop_token_array(None, 2))
    allowed = decode.allowed_ids(211, model.config.padded_vocab_size, None, 2)
    outs = [
        decode._generate_jit(
            graphdef,
            state,
            layers,
            *args,
            allowed,
            jax.random.key(4),
            sampler,
            max_new_tokens=12,
            pad_id=0,
        ).tokens
        for layers in (views, None)
    ]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(
        outs[0], generate(model, prompts, max_new_tokens=12, sampler=sampler, rng=4).tokens
    )
    under_trace = []
    jax.eval_shape(lambda s: under_trace.append(nnx.merge(graphdef, s).layer_views()), state)
    assert under_trace == [None]
