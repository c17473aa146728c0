"""Generation for the three tasks: image-constrained decoding, seeds, bad inputs, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from llmcxr_jax import checkpoint, decode
from llmcxr_jax.data import instructions
from llmcxr_jax.errors import InputError
from llmcxr_jax.generate import Generator
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset
from llmcxr_jax.models.vqgan import VQGAN
from llmcxr_jax.models.vqgan import get_preset as vq_preset
from llmcxr_jax.tokenizer import MultimodalTokenizer

ROOT = Path(__file__).resolve().parents[1]
REPORTS = [
    "The heart size is normal. No pleural effusion or pneumothorax.",
    "Moderate left pleural effusion. Mild cardiomegaly.",
    "Right upper lobe consolidation, consistent with pneumonia.",
    "Small right apical pneumothorax. Lungs otherwise clear.",
]


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    vq = VQGAN(vq_preset("tiny"), rngs=nnx.Rngs(0))
    texts = REPORTS * 5 + list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR)
    tok = MultimodalTokenizer.train_bpe(
        texts + [instructions.INTRO], vocab_size=320, num_image_codes=vq.config.n_embed
    )
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, vocab_pad_multiple=128)
    model = GPTNeoX(cfg, rngs=nnx.Rngs(1))
    return Generator(model, tok, vq, batch_size=4)


def _codes(gen, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, gen.tokenizer.num_image_codes, gen.num_codes) for _ in range(n)]


@pytest.mark.parametrize(
    "sampler",
    [
        decode.GREEDY,
        decode.Sampler(top_p=0.92),
        decode.Sampler(temperature=3.0, top_p=1.0),
        decode.Sampler(temperature=0.1, top_k=5),
    ],
)
def test_every_generated_image_has_exactly_hw_valid_codes(gen, sampler):
    out = gen.images(REPORTS + REPORTS[:1], sampler=sampler, seed=3)  # 5 rows: a padded batch
    assert not out.failures
    for codes in out.values:
        assert codes.shape == (gen.num_codes,)
        assert codes.min() >= 0 and codes.max() < gen.tokenizer.num_image_codes
    pixels = gen.decode(np.stack(out.values))
    res = gen.vqgan.config.resolution
    assert pixels.shape == (5, res, res, 3) and np.abs(pixels).max() <= 1.0


def test_constrained_greedy_equals_masked_full_vocabulary(gen):
    """Slicing the output projection changes no decision: same argmax as masking the rest."""
    tok, model = gen.tokenizer, gen.model
    ids, _ = tok.encode_paragraph(instructions.report_to_cxr_prompt(REPORTS[1]))
    prompt = np.concatenate([ids, [tok.image_begin_id]])[None]
    sliced = decode.generate(
        model, prompt, max_new_tokens=gen.num_codes, vocab_range=tok.image_range
    )
    masked = decode.generate(
        model,
        prompt,
        max_new_tokens=gen.num_codes,
        token_mask=tok.allowed_mask("image", model.config.padded_vocab_size),
    )
    np.testing.assert_array_equal(np.asarray(sliced.tokens), np.asarray(masked.tokens))


def test_text_never_contains_image_ids_and_stops_at_end(gen):
    tok, model = gen.tokenizer, gen.model
    # a flat distribution (temperature 5) over a vocabulary that is mostly image ids
    ids, _ = tok.encode_paragraph(instructions.cxr_to_report_prompt(_codes(gen, 1)[0]))
    out = decode.generate(
        model,
        ids[None],
        max_new_tokens=40,
        sampler=decode.Sampler(temperature=5.0),
        token_mask=tok.allowed_mask("text", model.config.padded_vocab_size),
        stop_tokens=[tok.end_id],
        rng=7,
    )
    toks = np.asarray(out.tokens[0])
    assert (toks < tok.text_vocab_size).all()
    res = gen.reports(
        _codes(gen, 3), sampler=decode.Sampler(temperature=5.0), seed=1, max_new_tokens=64
    )
    assert not res.failures and all(isinstance(r, str) for r in res.values)
    too_long = gen.reports(_codes(gen, 1), max_new_tokens=400, names=["film.png"])
    assert too_long.values == [None] and "film.png: prompt too long" in str(too_long.failures[0])


def test_same_seed_same_outputs_different_seed_different_samples(gen):
    codes = _codes(gen, 3)
    a = gen.reports(codes, seed=11, max_new_tokens=32).values
    b = gen.reports(codes, seed=11, max_new_tokens=32).values
    c = gen.reports(codes, seed=12, max_new_tokens=32).values
    assert a == b and a != c
    ia = np.stack(gen.images(REPORTS, seed=5).values)
    ib = np.stack(gen.images(REPORTS, seed=5).values)
    ic = np.stack(gen.images(REPORTS, seed=6).values)
    np.testing.assert_array_equal(ia, ib)
    assert (ia != ic).any()
    k = gen.images(REPORTS[:2], seed=5, num_samples=3).values
    assert k[0].shape == (3, gen.num_codes) and (k[0][0] != k[0][1]).any()


def test_streams_end_with_what_a_batch_of_one_gives(gen):
    one = Generator(gen.model, gen.tokenizer, gen.vqgan, batch_size=1)
    codes = _codes(gen, 1, seed=4)[0]
    texts = list(one.stream_report(codes, seed=4, max_new_tokens=32))
    assert texts[-1] == one.reports([codes], seed=4, max_new_tokens=32).values[0]
    assert all(isinstance(t, str) for t in texts)
    film = list(one.stream_image(REPORTS[1], seed=2))
    assert len(film) == gen.num_codes
    np.testing.assert_array_equal(film, one.images([REPORTS[1]], seed=2).values[0])
    q = "Is there a pleural effusion?"
    answer = list(one.stream_answer(codes, q, max_new_tokens=8))[-1]
    assert answer == one.answers([codes], [q], max_new_tokens=8).values[0]
    # bad inputs are refused when the stream is asked for, before anything runs
    with pytest.raises(InputError, match="empty report"):
        one.stream_image("  ")
    with pytest.raises(InputError, match="empty question"):
        one.stream_answer(codes, " ")
    with pytest.raises(InputError, match="prompt too long"):
        one.stream_report(codes, max_new_tokens=400)
    with pytest.raises(InputError, match="expected"):
        one.stream_report(np.arange(3))


def test_bad_inputs_are_reported_and_the_rest_completes(gen, tmp_path):
    res = gen.vqgan.config.resolution
    good = tmp_path / "good.png"
    Image.fromarray(np.full((res + 8, res + 4), 120, np.uint8)).save(good)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((res // 2, res // 2), np.uint8)).save(small)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    missing = tmp_path / "missing.dcm"
    encoded = gen.encode_files([good, junk, small, missing])
    assert [f.index for f in encoded.failures] == [1, 2, 3]
    for f in encoded.failures:
        assert "\n" not in str(f) and Path(f.item).name in str(f)
    assert encoded.values[0].shape == (gen.num_codes,)
    reports = gen.reports(encoded.values, seed=0, max_new_tokens=32)
    assert isinstance(reports.values[0], str) and reports.values[1] is None

    wrong = gen.reports([_codes(gen, 1)[0], np.arange(3)], seed=0, max_new_tokens=32)
    assert [f.index for f in wrong.failures] == [1] and "expected" in wrong.failures[0].message
    imgs = gen.images(["", REPORTS[0], "   "], seed=0)
    assert [f.index for f in imgs.failures] == [0, 2]
    assert all("empty report" in f.message for f in imgs.failures)
    assert imgs.values[1].shape == (gen.num_codes,)


def test_generate_cli_all_three_tasks(gen, tmp_path):
    lm_dir, vq_dir = tmp_path / "lm", tmp_path / "vq"
    checkpoint.save_model(lm_dir, gen.model)
    gen.tokenizer.save(lm_dir / "tokenizer")
    checkpoint.save_model(vq_dir, gen.vqgan)
    res = gen.vqgan.config.resolution
    img = tmp_path / "cxr.png"
    Image.fromarray(np.full((res, res), 90, np.uint8)).save(img)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    base = [sys.executable, "-m", "llmcxr_jax.cli", "generate", "--checkpoint", str(lm_dir)]
    base += ["--vqgan", str(vq_dir), "--seed", "0", "--max-new-tokens", "32"]

    def run(*args):
        return subprocess.run([*base, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)

    out = run("report", "--images", str(img), str(bad), "--out", str(tmp_path / "r"))
    assert out.returncode == 1, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "bad.jpg" in errors[0]
    rows = [json.loads(x) for x in (tmp_path / "r" / "reports.jsonl").read_text().splitlines()]
    assert rows[0]["input"] == str(img) and isinstance(rows[0]["report"], str)
    assert rows[1]["error"]

    out = run("image", "--report", REPORTS[0], "--report", REPORTS[1], "--out", str(tmp_path / "i"))
    assert out.returncode == 0, out.stderr
    pngs = sorted((tmp_path / "i").glob("*.png"))
    assert len(pngs) == 2 and Image.open(pngs[0]).size == (res, res)
    codes = np.load(tmp_path / "i" / "codes.npy")
    assert codes.shape == (2, gen.num_codes)

    out = run("vqa", "--images", str(img), "--question", "Is there a pleural effusion?")
    assert out.returncode == 0, out.stderr
    assert "Is there a pleural effusion?" in out.stdout
