"""The multimodal tokenizer: text through a BPE, images as VQ-GAN code ids after the text.

LLM-CXR writes an image into a paragraph as the string `<image>`; the text tokenizer splits it
into `<`, `image`, `>`, and the `image` token is replaced by the image's h*w code ids
(`text_vocab_size + code`), so the plain text tokens `<` and `>` mark where an image begins
and ends. Paragraphs follow dolly's template (data/instructions.py); the special tokens
`### End`, `### Instruction:`, `### Response:` and LLM-CXR's `### Response:\\n` are single ids.

Two text tokenizers serve: a Hugging Face `tokenizer.json` read from a local directory (dolly's
for real runs; nothing is downloaded), or a byte-level BPE trained here with `tokenizers` on a
data set's text (the demo). Either way the vocabulary seen by the model is text, then codes;
`MultimodalTokenizer` alone owns that id layout. LLM-CXR's: 50,281 text entries (GPT-NeoX BPE,
dolly's three special tokens and `### Response:\\n`), then image code `c` of the 1,024-entry
codebook as id `50281 + c`, 51,305 in all. The model pads its embedding tables further (to a
multiple of 128 rows, `models/gpt_neox.py: resize_vocab`); `allowed_mask(kind, padded_size)`
never allows those rows.

`encode_paragraph` returns `(ids, loss_mask)` with the response-only mask of LLM-CXR's released
code (everything up to and including the first `### Response:\\n` masked) or the whole-paragraph
mask the paper describes; `decode_paragraph` is its inverse.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr_jax.errors import InputError, positive_int

IMAGE_PLACEHOLDER = "<image>"
END_KEY = "### End"
INSTRUCTION_KEY = "### Instruction:"
RESPONSE_KEY = "### Response:"
RESPONSE_KEY_NL = "### Response:\n"
SPECIAL_TOKENS = (END_KEY, INSTRUCTION_KEY, RESPONSE_KEY, RESPONSE_KEY_NL)
EOS = "<|endoftext|>"  # GPT-NeoX: bos = eos = pad = id 0
META_FILE = "llmcxr_tokenizer.json"
MASK_MODES = ("response", "paragraph")


class TokenizerError(InputError):
    """A paragraph or tokenizer that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """A training or prompt text with at most one `<image>` placeholder and that image's codes."""

    text: str
    codes: np.ndarray | None = None  # int [h*w] VQ-GAN codes of the image, if any

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Paragraph) or self.text != other.text:
            return False
        if self.codes is None or other.codes is None:
            return self.codes is None and other.codes is None
        return np.array_equal(self.codes, other.codes)


class MultimodalTokenizer:
    """Text ids from a `tokenizers.Tokenizer`, then `num_image_codes` image ids."""

    def __init__(self, tokenizer: Any, num_image_codes: int):
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
        self.tokenizer = tokenizer
        self.num_image_codes = num_image_codes
        self.text_vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        ids = {t: tokenizer.token_to_id(t) for t in (*SPECIAL_TOKENS, EOS)}
        if ids[EOS] is None:
            raise TokenizerError(f"the text tokenizer has no {EOS!r} token (pad/eos)")
        self.end_id = ids[END_KEY]
        self.response_id = ids[RESPONSE_KEY_NL]
        self.eos_id = self.pad_id = ids[EOS]
        lt, gt = self._single_id("<"), self._single_id(">")
        self.image_begin_id, self.image_end_id = lt, gt

    def _single_id(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) != 1:
            raise TokenizerError(f"{text!r} must be a single token, got {ids}")
        return ids[0]

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, num_image_codes: int | None = None
    ) -> MultimodalTokenizer:
        """From a directory with `tokenizer.json` (dolly's, or one saved by `save`)."""
        from tokenizers import Tokenizer

        root = Path(path)
        tok_file = root / "tokenizer.json"
        if not tok_file.is_file():
            raise TokenizerError(f"{root}: no tokenizer.json (a local Hugging Face tokenizer dir)")
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:
            raise TokenizerError(f"{tok_file}: unreadable tokenizer ({e})") from e
        meta_file = root / META_FILE
        if num_image_codes is None:
            if not meta_file.is_file():
                raise TokenizerError(
                    f"{root}: pass num_image_codes (no {META_FILE} says how many image codes)"
                )
            try:
                meta = json.loads(meta_file.read_text())
                num_image_codes = positive_int(meta["num_image_codes"], "num_image_codes")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise TokenizerError(f"{meta_file}: unreadable ({type(e).__name__}: {e})") from e
        return cls(tokenizer, num_image_codes)

    @classmethod
    def train_bpe(
        cls, texts: Iterable[str], *, vocab_size: int, num_image_codes: int
    ) -> MultimodalTokenizer:
        """A byte-level BPE (GPT-NeoX's kind) trained on `texts`, with the special tokens."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
        return cls(tokenizer, num_image_codes)

    def save(self, path: str | os.PathLike) -> None:
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(root / "tokenizer.json"))
        meta = {"num_image_codes": self.num_image_codes, "text_vocab_size": self.text_vocab_size}
        (root / META_FILE).write_text(json.dumps(meta, indent=2))

    # -- vocabulary --------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.text_vocab_size + self.num_image_codes

    @property
    def image_range(self) -> tuple[int, int]:
        return self.text_vocab_size, self.vocab_size

    def code_ids(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_image_codes):
            raise TokenizerError(
                f"image codes must lie in [0, {self.num_image_codes}); "
                f"got {codes.min()}..{codes.max()}"
            )
        return codes.astype(np.int32) + self.text_vocab_size

    def is_image(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.text_vocab_size) & (ids < self.vocab_size)

    def allowed_mask(self, kind: str, padded_size: int | None = None) -> np.ndarray:
        """[padded_size] bool of ids a sampler may produce: "text", "image" or "all"."""
        n = padded_size or self.vocab_size
        ids = np.arange(n)
        if kind == "text":
            return ids < self.text_vocab_size
        if kind == "image":
            return self.is_image(ids)
        if kind == "all":
            return ids < self.vocab_size
        raise ValueError(f"kind must be text, image or all; got {kind!r}")

    # -- text --------------------------------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode_text(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if any(i >= self.text_vocab_size for i in ids):
            raise TokenizerError("decode_text got image ids; use decode_paragraph")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # -- paragraphs --------------------------------------------------------------------------

    def encode_paragraph(
        self, paragraph: Paragraph, mask_mode: str = "response"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32, loss_mask int32) of a paragraph; its image (if any) becomes code ids."""
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        text = paragraph.text
        n_images = text.count(IMAGE_PLACEHOLDER)
        if n_images != (0 if paragraph.codes is None else 1):
            raise TokenizerError(
                f"paragraph has {n_images} {IMAGE_PLACEHOLDER} placeholders but "
                f"{'no' if paragraph.codes is None else 'one'} image"
            )
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        if paragraph.codes is not None:
            start = text.index(IMAGE_PLACEHOLDER) + 1  # "image" inside "<image>"
            end = start + len("image")
            covering = [i for i, (a, b) in enumerate(enc.offsets) if a < end and b > start]
            if (
                not covering
                or enc.offsets[covering[0]][0] != start
                or enc.offsets[covering[-1]][1] != end
            ):
                raise TokenizerError(
                    "the tokenizer merges 'image' with its neighbours; cannot place the image codes"
                )
            i, j = covering[0], covering[-1] + 1
            ids = ids[:i] + self.code_ids(paragraph.codes).tolist() + ids[j:]
        ids_arr = np.asarray(ids, np.int32)
        if mask_mode == "paragraph":
            return ids_arr, np.ones_like(ids_arr)
        hits = np.flatnonzero(ids_arr == self.response_id)
        mask = np.zeros_like(ids_arr)
        if hits.size:
            mask[hits[0] + 1 :] = 1
        return ids_arr, mask

    def decode_paragraph(self, ids: Sequence[int]) -> Paragraph:
        """The inverse of `encode_paragraph`: text with `<image>` back where the codes were."""
        ids_arr = np.asarray(ids)
        img = self.is_image(ids_arr)
        if not img.any():
            return Paragraph(self.decode_text(ids_arr))
        where = np.flatnonzero(img)
        lo, hi = where[0], where[-1] + 1
        if hi - lo != len(where):
            raise TokenizerError(
                "image ids are not contiguous: more than one image, or a broken one"
            )
        before = self.decode_text(ids_arr[:lo])
        after = self.decode_text(ids_arr[hi:])
        codes = ids_arr[lo:hi] - self.text_vocab_size
        return Paragraph(before + "image" + after, codes.astype(np.int32))
