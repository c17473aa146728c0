"""The multimodal tokenizer: vocabulary layout, paragraphs with images, loss masks."""

import json

import numpy as np
import pytest

from llmcxr_jax.data import instructions
from llmcxr_jax.models.gpt_neox import get_preset
from llmcxr_jax.tokenizer import (
    END_KEY,
    EOS,
    RESPONSE_KEY_NL,
    SPECIAL_TOKENS,
    MultimodalTokenizer,
    Paragraph,
    TokenizerError,
)

CORPUS = (
    [
        instructions.paragraph_text(ins, "<image>", "The heart is enlarged. No pleural effusion.")
        for ins in instructions.CXR_TO_REPORT
    ]
    + [
        instructions.paragraph_text(ins, "Small left pneumothorax.", "<image>")
        for ins in instructions.REPORT_TO_CXR
    ]
    + ["What is the capital of France? Paris is the capital of France."] * 5
)


@pytest.fixture(scope="module")
def tok():
    return MultimodalTokenizer.train_bpe(CORPUS, vocab_size=400, num_image_codes=64)


def test_vocabulary_layout(tok):
    assert tok.vocab_size == tok.text_vocab_size + 64
    assert tok.image_range == (tok.text_vocab_size, tok.text_vocab_size + 64)
    for t in SPECIAL_TOKENS:
        assert len(tok.encode_text(t)) == 1, t
    assert tok.encode_text("<") == [tok.image_begin_id] and tok.encode_text(">") == [
        tok.image_end_id
    ]
    np.testing.assert_array_equal(
        tok.code_ids([0, 63]), [tok.text_vocab_size, tok.text_vocab_size + 63]
    )
    with pytest.raises(TokenizerError, match=r"\[0, 64\)"):
        tok.code_ids([64])
    assert tok.allowed_mask("image", 512).sum() == 64
    assert not (tok.allowed_mask("text", 512) & tok.allowed_mask("image", 512)).any()


def _llm_cxr_sized_tokenizer():
    """A word-level tokenizer with dolly's 50,281 text entries (its 4 special tokens included)
    and LLM-CXR's 1,024 image codes: the real layout without dolly's tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [EOS, "<", ">", "image", *(f"w{i}" for i in range(50281 - len(SPECIAL_TOKENS) - 4))]
    text = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=EOS))
    text.pre_tokenizer = pre_tokenizers.Split(r"[<>]", "isolated")
    return MultimodalTokenizer(text, num_image_codes=1024)


def test_llm_cxr_id_layout():
    """LLM-CXR's numbers, computed by hand: text 50,281 + 1,024 codes = 51,305 ids, tables of
    51,328 rows (the next multiple of 128)."""
    tok = _llm_cxr_sized_tokenizer()
    padded = get_preset("tiny", vocab_size=tok.vocab_size, vocab_pad_multiple=128)
    assert (tok.vocab_size, padded.padded_vocab_size) == (51305, 51328)
    assert tok.image_range == (50281, 51305)
    np.testing.assert_array_equal(tok.code_ids([0, 1023]), [50281, 51304])
    ids = [tok.image_begin_id, 50281, 51304, tok.image_end_id]
    np.testing.assert_array_equal(tok.decode_paragraph(ids).codes, [0, 1023])
    with pytest.raises(TokenizerError, match=r"\[0, 1024\)"):
        tok.code_ids([1024])
    assert not tok.is_image([50280, 51305]).any()
    text, image, every = (tok.allowed_mask(k, 51328) for k in ("text", "image", "all"))
    assert (text.sum(), image.sum(), every.sum()) == (50281, 1024, 51305)
    assert not (text & image).any() and len(every) == 51328
    assert len(tok.allowed_mask("all")) == 51305  # unpadded by default


@pytest.mark.parametrize("task", ["report", "image", "vqa", "text"])
def test_paragraph_round_trip_and_image_placement(tok, task):
    codes = np.random.default_rng(0).integers(0, 64, 16)
    p = {
        "report": instructions.cxr_to_report("Lungs are clear.", codes, key="a"),
        "image": instructions.report_to_cxr("Moderate cardiomegaly.", codes, key="b"),
        "vqa": instructions.vqa("Is there a pneumothorax?", "no", codes),
        "text": instructions.instruction_following("Say hi.", "", "Hi!"),
    }[task]
    ids, mask = tok.encode_paragraph(p)
    assert tok.decode_paragraph(ids) == p
    img = np.flatnonzero(tok.is_image(ids))
    if task == "text":
        assert img.size == 0
    else:  # exactly h*w codes, contiguous, between "<" and ">"
        assert img.size == 16 and img[-1] - img[0] == 15
        assert ids[img[0] - 1] == tok.image_begin_id and ids[img[-1] + 1] == tok.image_end_id
        np.testing.assert_array_equal(ids[img] - tok.text_vocab_size, codes)
    # response-only mask: zero through the first "### Response:\n", one after it
    r = int(np.flatnonzero(ids == tok.response_id)[0])
    assert not mask[: r + 1].any() and mask[r + 1 :].all()
    assert tok.decode_text(ids[r + 1 :][~tok.is_image(ids[r + 1 :])]).endswith(END_KEY)
    _, whole = tok.encode_paragraph(p, "paragraph")
    assert whole.all()


def test_response_key_with_newline_is_one_token(tok):
    ids = tok.encode_text("x\n\n" + RESPONSE_KEY_NL + "y")
    assert tok.response_id in ids
    assert tok.tokenizer.token_to_id(RESPONSE_KEY_NL) == tok.response_id


def test_bad_paragraphs_are_refused(tok):
    with pytest.raises(TokenizerError, match="1 <image> placeholders but no image"):
        tok.encode_paragraph(Paragraph("see <image>"))
    with pytest.raises(TokenizerError, match="0 <image> placeholders but one image"):
        tok.encode_paragraph(Paragraph("no image here", np.zeros(4, int)))
    with pytest.raises(ValueError, match="mask_mode"):
        tok.encode_paragraph(Paragraph("x"), "all")


def test_save_and_load_give_the_same_ids(tok, tmp_path):
    tok.save(tmp_path)
    back = MultimodalTokenizer.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "llmcxr_tokenizer.json").read_text())["num_image_codes"] == 64
    p = instructions.cxr_to_report("Lungs are clear.", np.arange(16), key="z")
    np.testing.assert_array_equal(back.encode_paragraph(p)[0], tok.encode_paragraph(p)[0])
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        MultimodalTokenizer.from_pretrained(tmp_path / "nowhere")
