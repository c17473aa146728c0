"""Bad and hostile inputs, per command: one table, run in-process through `cli.main`.

Each row names a bad input, the exit status and a fragment of the one line it must give:
status 2 is a refused command (`llmcxr-jax COMMAND: error: ...`, exactly one `error:` line),
status 1 a batch whose bad items each got their own `error: ITEM: REASON` line while the good
ones completed, status 0 an input that is skipped and counted (hostile archive members). No row
may print a traceback, and no payload may run: the hostile files' payload would create a marker
file, which is checked to be absent. Rows that share a `run` come from one invocation (one
batch of images). docs/bad-inputs.md is rendered from this table
(`python tests/test_bad_inputs.py` rewrites it) and a test keeps the two equal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import struct
import sys
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_dicom

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-inputs.md"
REPORTS = [
    "The heart size is normal. No pleural effusion or pneumothorax.",
    "Moderate left pleural effusion. Mild cardiomegaly.",
]


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    command: str  # as typed after `llmcxr-jax`
    given: str  # the bad input, in words (Markdown)
    run: str  # the invocation (RUNS) that gives it
    status: int  # 2 refused, 1 batch with failed items, 0 skipped and counted
    expect: str | tuple[str, ...]  # in the error line (status 2), the item's line (1), stdout (0)
    item: str | None = None  # status 1: the item, relative to the run's directory

    @property
    def fragments(self) -> tuple[str, ...]:
        return (self.expect,) if isinstance(self.expect, str) else self.expect


@dataclasses.dataclass
class Assets:
    lm: Path  # a tiny GPT-NeoX checkpoint with its tokenizer
    vq: Path  # a tiny VQ-GAN checkpoint (32 px, 256 codes of 64)
    num_codes: int


@dataclasses.dataclass
class Ran:
    dir: Path
    status: int
    out: str
    err: str


class Payload:
    """What a hostile pickle holds: unpickling it runs `touch MARKER`. Nothing may unpickle it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- the files the runs are given ----------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height and holds no pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _image(path: Path, size: tuple[int, int], fmt: str = "PNG") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).save(path, format=fmt)
    return path


BAD_IMAGES: dict[str, Callable[[Path], object]] = {  # name -> writer of that bad file
    "dir.png": lambda p: p.mkdir(),
    "empty.png": lambda p: p.write_bytes(b""),
    "text.png": lambda p: p.write_text("this is not an image\n"),
    "cut.png": lambda p: p.write_bytes(_image(p, (64, 64)).read_bytes()[:120]),
    "cut.jpg": lambda p: p.write_bytes(_image(p, (64, 64), "JPEG").read_bytes()[:300]),
    "cut.dcm": lambda p: write_dicom(p, np.full((64, 64), 90, np.uint8), cut=True),
    "nopixels.dcm": lambda p: write_dicom(p, None),
    "small.png": lambda p: _image(p, (8, 8)),
    "huge.png": lambda p: _png_header_only(p, 100_000, 100_000),
    "missing.png": lambda p: None,
}


def _bad_images(tmp: Path, names: list[str]) -> list[str]:
    (tmp / "bad").mkdir(exist_ok=True)
    for name in names:
        BAD_IMAGES[name](tmp / "bad" / name)
    return [str(tmp / "bad" / n) for n in names]


HF_CONFIG = {
    "model_type": "gpt_neox",
    "architectures": ["GPTNeoXForCausalLM"],
    "vocab_size": 211,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 96,
    "max_position_embeddings": 256,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
}


def _hf_dir(tmp: Path, config: object = None, **fields: object) -> str:
    d = tmp / "hf"
    d.mkdir()
    cfg = dict(HF_CONFIG, **fields) if config is None else config
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def _taming_yaml(path: Path) -> Path:
    import yaml

    from llmcxr_jax.convert import taming
    from llmcxr_jax.models.vqgan import get_preset

    path.write_text(yaml.safe_dump(taming.config_to_taming(get_preset("tiny"))))
    return path


def _torch_payload(path: Path, marker: Path, *, lightning: bool = False) -> Path:
    import torch

    obj = {"w": Payload(marker)}
    torch.save({"state_dict": obj} if lightning else obj, path)
    return path


def _codes_file(tmp: Path, array: np.ndarray, **kwargs: object) -> str:
    np.save(tmp / "codes.npy", array, **kwargs)
    return str(tmp / "codes.npy")


def _config_file(tmp: Path) -> str:
    f = tmp / "cfg.py"
    f.write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    return ml_collections.ConfigDict({'seed': 0, 'steps': 10})\n"
    )
    return str(f)


def _hostile_openi(tmp: Path) -> str:
    """fixtures' Open-i archives, plus members named `../../`, absolute, a symlink, a hardlink
    and a FIFO (tar members the builder must never write anywhere)."""
    import fixtures as fx

    manual = fx.make_openi_archives(tmp / "manual")
    hostile = {
        "../../escape.xml": "escape",
        str(tmp / "absolute.xml"): "absolute",
        "../../escape.png": "escape",
        str(tmp / "absolute.png"): "absolute",
    }
    for archive in ("NLMCXR_reports.tgz", "NLMCXR_png.tgz"):
        path = manual / archive
        with tarfile.open(path, "r:gz") as src:
            members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src]
        suffix = ".xml" if "reports" in archive else ".png"
        with tarfile.open(path, "w:gz") as tar:
            for m, data in members:
                tar.addfile(m, io.BytesIO(data) if data is not None else None)
            for name in (n for n in hostile if n.endswith(suffix)):
                fx._add(tar, name, fx._openi_xml(9, {"FINDINGS": "Clear."}, [], []).encode())
            for kind, name in (
                (tarfile.SYMTYPE, f"link{suffix}"),
                (tarfile.LNKTYPE, f"hard{suffix}"),
                (tarfile.FIFOTYPE, f"fifo{suffix}"),
            ):
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = "../../../outside" if kind != tarfile.FIFOTYPE else ""
                tar.addfile(info)
    return str(manual)


def _outside_of_openi(tmp: Path) -> None:
    """Nothing of the hostile archive exists outside the data directory."""
    for p in (
        tmp / "absolute.xml",
        tmp / "absolute.png",
        tmp.parent / "escape.xml",
        tmp.parent.parent / "escape.xml",
        tmp.parent.parent / "escape.png",
        tmp / "outside",
        tmp.parent / "outside",
    ):
        assert not p.exists(), p


# --- the invocations ---------------------------------------------------------------------


def _generate(a: Assets, task: str, *args: str) -> list[str]:
    return ["generate", task, "--checkpoint", str(a.lm), "--vqgan", str(a.vq), *args]


def _good_codes(tmp: Path, a: Assets) -> str:
    return _codes_file(tmp, np.zeros((1, a.num_codes), np.int32))


RUNS: dict[str, Callable[[Path, Assets], list[str]]] = {
    # generate
    "gen-max-new-0": lambda t, a: _generate(
        a, "report", "--codes", _good_codes(t, a), "--max-new-tokens", "0"
    ),
    "gen-max-new-neg": lambda t, a: _generate(
        a, "report", "--codes", _good_codes(t, a), "--max-new-tokens", "-1"
    ),
    "gen-batch-0": lambda t, a: _generate(
        a, "report", "--codes", _good_codes(t, a), "--batch-size", "0"
    ),
    "gen-temperature-0": lambda t, a: _generate(
        a, "report", "--codes", _good_codes(t, a), "--temperature", "0"
    ),
    "gen-codes-0d": lambda t, a: _generate(a, "report", "--codes", _codes_file(t, np.array(7))),
    "gen-codes-pickle": lambda t, a: _generate(
        a,
        "report",
        "--codes",
        _codes_file(t, np.array([Payload(t / "marker")], dtype=object), allow_pickle=True),
    ),
    "gen-codes-missing": lambda t, a: _generate(a, "report", "--codes", str(t / "none.npy")),
    "gen-codes-width": lambda t, a: _generate(
        a, "report", "--codes", _codes_file(t, np.zeros((2, 7), np.int32))
    ),
    "gen-no-tokenizer": lambda t, a: [
        "generate",
        "report",
        "--checkpoint",
        str(a.vq),
        "--codes",
        _good_codes(t, a),
    ],  # fmt: skip
    "gen-no-checkpoint": lambda t, a: [
        "generate",
        "report",
        "--checkpoint",
        str(t / "none"),
        "--codes",
        _good_codes(t, a),
    ],  # fmt: skip
    "gen-images-no-vqgan": lambda t, a: [
        "generate",
        "report",
        "--checkpoint",
        str(a.lm),
        "--images",
        str(_image(t / "x.png", (32, 32))),
    ],  # fmt: skip
    "gen-vqa-questions": lambda t, a: _generate(
        a,
        "vqa",
        "--codes",
        _codes_file(t, np.zeros((3, a.num_codes), np.int32)),
        "--question",
        "Is there an effusion?",
        "--question",
        "Is the heart enlarged?",
    ),  # fmt: skip
    "gen-report-batch": lambda t, a: _generate(
        a,
        "report",
        "--images",
        str(_image(t / "good.png", (40, 36))),
        *_bad_images(t, list(BAD_IMAGES)),
        "--max-new-tokens",
        "4",
        "--out",
        str(t / "out"),
    ),
    "gen-vqa-batch": lambda t, a: _generate(
        a,
        "vqa",
        "--images",
        *_bad_images(t, ["dir.png", "empty.png", "nopixels.dcm", "small.png", "missing.png"]),
        "--question",
        "Is there a pleural effusion?",
    ),
    # import-hf
    "hf-config-list": lambda t, a: [
        "import-hf",
        "--hf-dir",
        _hf_dir(t, [1, 2, 3]),
        "--out",
        str(t / "o"),
    ],
    "hf-heads-0": lambda t, a: [
        "import-hf",
        "--hf-dir",
        _hf_dir(t, num_attention_heads=0),
        "--out",
        str(t / "o"),
    ],  # fmt: skip
    "hf-heads-four": lambda t, a: [
        "import-hf",
        "--hf-dir",
        _hf_dir(t, num_attention_heads="four"),
        "--out",
        str(t / "o"),
    ],  # fmt: skip
    "hf-pad-0": lambda t, a: [
        "import-hf",
        "--hf-dir",
        _hf_dir(t),
        "--out",
        str(t / "o"),
        "--vocab-pad-multiple",
        "0",
    ],  # fmt: skip
    "hf-no-dir": lambda t, a: ["import-hf", "--hf-dir", str(t / "none"), "--out", str(t / "o")],
    "hf-pickle-bin": lambda t, a: [
        "import-hf",
        "--hf-dir",
        str(_torch_payload(Path(_hf_dir(t)) / "pytorch_model.bin", t / "marker").parent),
        "--out",
        str(t / "o"),
    ],
    "hf-out-exists": lambda t, a: [
        "import-hf",
        "--hf-dir",
        _hf_dir(t),
        "--out",
        str(_existing_dir(t / "o")),
    ],  # fmt: skip
    # import-taming
    "taming-pickle-ckpt": lambda t, a: [
        "import-taming",
        "--ckpt",
        str(_torch_payload(t / "evil.ckpt", t / "marker", lightning=True)),
        "--config",
        str(_taming_yaml(t / "vq.yaml")),
        "--out",
        str(t / "o"),
    ],
    "taming-yaml-apply": lambda t, a: [
        "import-taming",
        "--ckpt",
        str(_torch_payload(t / "evil.ckpt", t / "marker", lightning=True)),
        "--config",
        str(
            _write(
                t / "vq.yaml", f'model: !!python/object/apply:os.system ["touch {t / "marker"}"]\n'
            )
        ),
        "--out",
        str(t / "o"),
    ],
    # exports
    "export-hf-nonempty": lambda t, a: [
        "export-hf",
        "--checkpoint",
        str(a.lm),
        "--out",
        str(_existing_dir(t / "hf")),
    ],  # fmt: skip
    "export-taming-exists": lambda t, a: [
        "export-taming",
        "--checkpoint",
        str(a.vq),
        "--out",
        str(_write(t / "vq.ckpt", "mine")),
    ],  # fmt: skip
    # train, plan, encode-images
    "train-config-field-code": lambda t, a: [
        "train",
        "--config",
        _config_file(t),
        "--workdir",
        str(t / "w"),
        f"--config.x=__import__('os').system('touch {t / 'marker'}')",
    ],  # fmt: skip
    "train-config-value-code": lambda t, a: [
        "train",
        "--config",
        _config_file(t),
        "--workdir",
        str(t / "w"),
        f"--config.seed=__import__('os').system('touch {t / 'marker'}')",
    ],  # fmt: skip
    "plan-mesh": lambda t, a: ["plan", "--config", _config_file(t), "--mesh", "1,x,1"],
    "encode-source": lambda t, a: [
        "encode-images",
        "--checkpoint",
        str(a.vq),
        "--source",
        "webcam:0",
        "--out",
        str(t / "o"),
    ],  # fmt: skip
    # prepare-data
    "prepare-manual-missing": lambda t, a: [
        "prepare-data",
        "--builder",
        "open_i",
        "--data-dir",
        str(t / "data"),
        "--manual-dir",
        str(t / "nonexistent"),
    ],  # fmt: skip
    "prepare-manual-empty": lambda t, a: [
        "prepare-data",
        "--builder",
        "open_i",
        "--data-dir",
        str(t / "data"),
        "--manual-dir",
        str(_existing_dir(t / "manual", empty=True)),
    ],  # fmt: skip
    "prepare-manual-no-archive": lambda t, a: [
        "prepare-data",
        "--builder",
        "open_i",
        "--data-dir",
        str(t / "data"),
        "--manual-dir",
        str(_existing_dir(t / "manual")),
    ],  # fmt: skip
    "prepare-unknown-builder": lambda t, a: [
        "prepare-data",
        "--builder",
        "nosuch",
        "--data-dir",
        str(t / "data"),
    ],  # fmt: skip
    "prepare-kwarg-code": lambda t, a: [
        "prepare-data",
        "--builder",
        "cxr_phantoms",
        "--data-dir",
        str(t / "data"),
        "--builder-kwarg",
        f"x=__import__('os').system('touch {t / 'marker'}')",
    ],  # fmt: skip
    "prepare-kwarg-value-code": lambda t, a: [
        "prepare-data",
        "--builder",
        "cxr_phantoms",
        "--data-dir",
        str(t / "data"),
        "--builder-kwarg",
        f"train_size=__import__('os').system('touch {t / 'marker'}')",
    ],  # fmt: skip
    "prepare-openi-hostile": lambda t, a: [
        "prepare-data",
        "--builder",
        "open_i",
        "--data-dir",
        str(t / "data"),
        "--manual-dir",
        _hostile_openi(t),
    ],  # fmt: skip
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _existing_dir(path: Path, *, empty: bool = False) -> Path:
    path.mkdir()
    if not empty:
        (path / "mine.txt").write_text("mine")
    return path


def _no_marker(t: Path) -> None:
    assert not (t / "marker").exists(), "a payload ran"


def _no_data_dir(t: Path) -> None:
    assert not (t / "data").exists(), sorted(p.name for p in (t / "data").rglob("*"))


def _untouched(path: str) -> Callable[[Path], None]:
    def check(t: Path) -> None:
        f = t / path
        assert (f / "mine.txt" if f.is_dir() else f).read_text() == "mine"
        assert sorted(p.name for p in t.iterdir() if p.name.startswith(".")) == []

    return check


def _batch_completed(t: Path) -> None:
    rows = [json.loads(x) for x in (t / "out" / "reports.jsonl").read_text().splitlines()]
    assert rows[0]["input"].endswith("good.png") and isinstance(rows[0]["report"], str)
    assert all(r.get("error") for r in rows[1:]) and len(rows) == 1 + len(BAD_IMAGES)
    assert sorted(p.name for p in (t / "out").iterdir()) == ["reports.jsonl"]  # no temp left


CHECKS: dict[str, Callable[[Path], None]] = {
    "gen-codes-pickle": _no_marker,
    "hf-pickle-bin": _no_marker,
    "taming-pickle-ckpt": _no_marker,
    "taming-yaml-apply": _no_marker,
    "train-config-field-code": _no_marker,
    "train-config-value-code": _no_marker,
    "prepare-kwarg-code": lambda t: (_no_marker(t), _no_data_dir(t)),
    "prepare-kwarg-value-code": lambda t: (_no_marker(t), _no_data_dir(t)),
    "prepare-manual-missing": _no_data_dir,
    "prepare-manual-empty": _no_data_dir,
    "prepare-manual-no-archive": _no_data_dir,
    "prepare-unknown-builder": _no_data_dir,
    "prepare-openi-hostile": _outside_of_openi,
    "hf-out-exists": _untouched("o"),
    "export-hf-nonempty": _untouched("hf"),
    "export-taming-exists": _untouched("vq.ckpt"),
    "gen-report-batch": _batch_completed,
}


# --- the table ---------------------------------------------------------------------------

ROWS: list[Row] = [
    # generate: refused before anything runs
    Row("gen-max-new-0", "generate report", "`--max-new-tokens 0`", "gen-max-new-0", 2,
        "argument --max-new-tokens: must be a positive integer, got '0'"),
    Row("gen-max-new-neg", "generate report", "`--max-new-tokens -1`", "gen-max-new-neg", 2,
        "argument --max-new-tokens: must be a positive integer, got '-1'"),
    Row("gen-batch-0", "generate report", "`--batch-size 0`", "gen-batch-0", 2,
        "argument --batch-size: must be a positive integer, got '0'"),
    Row("gen-temperature-0", "generate report", "`--temperature 0` without `--greedy`",
        "gen-temperature-0", 2, "must be a number > 0, got '0' (--greedy decodes greedily)"),
    Row("gen-codes-0d", "generate report", "`--codes` holding a 0-d array", "gen-codes-0d", 2,
        "codes.npy: an array of shape (); expected [N, h*w]"),
    Row("gen-codes-pickle", "generate report",
        "`--codes` holding a pickled object array (payload)", "gen-codes-pickle", 2,
        "codes.npy: not a readable .npy array (Object arrays cannot be loaded"),
    Row("gen-codes-missing", "generate report", "`--codes` naming no file", "gen-codes-missing",
        2, "none.npy: no such file"),
    Row("gen-codes-width", "generate report", "`--codes` rows of the wrong length",
        "gen-codes-width", 2, "rows of 7 codes; this model's images have 256"),
    Row("gen-no-tokenizer", "generate report", "`--checkpoint` without `tokenizer/`",
        "gen-no-tokenizer", 2, "no tokenizer.json (pass --tokenizer DIR)"),
    Row("gen-no-checkpoint", "generate report", "`--checkpoint` naming no directory",
        "gen-no-checkpoint", 2, "none: no such checkpoint directory"),
    Row("gen-images-no-vqgan", "generate report", "`--images` without `--vqgan`",
        "gen-images-no-vqgan", 2, "image files need --vqgan DIR"),
    Row("gen-vqa-questions", "generate vqa", "two `--question` for three images",
        "gen-vqa-questions", 2, "2 --question for 3 images"),
    # generate: a batch of images, each bad one with its own reason, the good one completes
    Row("gen-image-directory", "generate report", "a directory named `.png`", "gen-report-batch",
        1, "cannot read file (Is a directory)", "bad/dir.png"),
    Row("gen-image-empty", "generate report", "a zero-byte file", "gen-report-batch", 1,
        "empty file", "bad/empty.png"),
    Row("gen-image-text", "generate report", "text named `.png`", "gen-report-batch", 1,
        "not an image", "bad/text.png"),
    Row("gen-image-cut-png", "generate report", "a truncated PNG", "gen-report-batch", 1,
        "truncated or corrupt", "bad/cut.png"),
    Row("gen-image-cut-jpeg", "generate report", "a truncated JPEG", "gen-report-batch", 1,
        "truncated or corrupt", "bad/cut.jpg"),
    Row("gen-image-cut-dicom", "generate report", "a truncated DICOM", "gen-report-batch", 1,
        "truncated or corrupt", "bad/cut.dcm"),
    Row("gen-image-no-pixels", "generate report", "a DICOM without pixel data",
        "gen-report-batch", 1, "no pixel data", "bad/nopixels.dcm"),
    Row("gen-image-small", "generate report", "an 8x8 image (the VQ-GAN reads 32x32 here)",
        "gen-report-batch", 1,
        "short side 8 is smaller than the resolution 32x32 (pass --allow-upscale to upscale)",
        "bad/small.png"),
    Row("gen-image-huge", "generate report", "a PNG header declaring 100000x100000",
        "gen-report-batch", 1, "pixels", "bad/huge.png"),
    Row("gen-image-missing", "generate report", "a file that does not exist",
        "gen-report-batch", 1, "No such file or directory", "bad/missing.png"),
    Row("gen-vqa-image-small", "generate vqa", "an 8x8 image", "gen-vqa-batch", 1,
        "short side 8 is smaller than", "bad/small.png"),
    Row("gen-vqa-image-no-pixels", "generate vqa", "a DICOM without pixel data",
        "gen-vqa-batch", 1, "no pixel data", "bad/nopixels.dcm"),
    Row("gen-vqa-image-directory", "generate vqa", "a directory named `.png`", "gen-vqa-batch",
        1, "cannot read file (Is a directory)", "bad/dir.png"),
    # import-hf
    Row("hf-config-list", "import-hf", "`config.json` holding `[1, 2, 3]`", "hf-config-list", 2,
        "config.json: holds a JSON list, expected an object of fields"),
    Row("hf-heads-0", "import-hf", "`num_attention_heads: 0`", "hf-heads-0", 2,
        "config.json: num_attention_heads must be a positive integer, got 0"),
    Row("hf-heads-four", "import-hf", '`num_attention_heads: "four"`', "hf-heads-four", 2,
        "config.json: num_attention_heads must be a positive integer, got 'four'"),
    Row("hf-pad-0", "import-hf", "`--vocab-pad-multiple 0`", "hf-pad-0", 2,
        "argument --vocab-pad-multiple: must be a positive integer, got '0'"),
    Row("hf-no-dir", "import-hf", "`--hf-dir` naming no directory", "hf-no-dir", 2,
        "none: no such directory"),
    Row("hf-pickle-bin", "import-hf", "a `pytorch_model.bin` whose pickle runs a command",
        "hf-pickle-bin", 2, ("pytorch_model.bin: ", "posix.system")),
    Row("hf-out-exists", "import-hf", "`--out` a non-empty directory, no `--overwrite`",
        "hf-out-exists", 2, "is a non-empty directory already (pass --overwrite to replace it)"),
    # import-taming
    Row("taming-pickle-ckpt", "import-taming", "a `.ckpt` whose pickle runs a command",
        "taming-pickle-ckpt", 2, ("evil.ckpt: ", "posix.system")),
    Row("taming-yaml-apply", "import-taming", "a YAML config with `!!python/object/apply`",
        "taming-yaml-apply", 2, "vq.yaml: unreadable YAML"),
    # exports
    Row("export-hf-nonempty", "export-hf", "`--out` a non-empty directory, no `--overwrite`",
        "export-hf-nonempty", 2,
        "is a non-empty directory already (pass --overwrite to replace it)"),
    Row("export-taming-exists", "export-taming", "`--out` an existing file, no `--overwrite`",
        "export-taming-exists", 2, "vq.ckpt: is a file already (pass --overwrite to replace it)"),
    # configs and other commands
    Row("train-config-field-code", "train", "`--config.x=__import__('os').system(...)`",
        "train-config-field-code", 2, "no config field 'x'"),
    Row("train-config-value-code", "train", "`--config.seed=__import__('os').system(...)`",
        "train-config-value-code", 2, "field is int, got str"),
    Row("plan-mesh", "plan", "`--mesh 1,x,1`", "plan-mesh", 2,
        "argument --mesh: must be three positive integers DATA,FSDP,TENSOR, got '1,x,1'"),
    Row("encode-source", "encode-images", "`--source webcam:0`", "encode-source", 2,
        "unknown image source 'webcam:0'"),
    # prepare-data
    Row("prepare-manual-missing", "prepare-data", "`--manual-dir` naming no directory",
        "prepare-manual-missing", 2, "nonexistent: no such directory"),
    Row("prepare-manual-empty", "prepare-data", "`--manual-dir` an empty directory",
        "prepare-manual-empty", 2, "manual: is empty; put the downloaded files there"),
    Row("prepare-manual-no-archive", "prepare-data", "`--manual-dir` without the Open-i archive",
        "prepare-manual-no-archive", 2, "NLMCXR_reports.tgz: not found"),
    Row("prepare-unknown-builder", "prepare-data", "`--builder nosuch`",
        "prepare-unknown-builder", 2, "data set 'nosuch': not found"),
    Row("prepare-kwarg-code", "prepare-data", "`--builder-kwarg x=__import__('os').system(...)`",
        "prepare-kwarg-code", 2, "unexpected keyword argument 'x'"),
    Row("prepare-kwarg-value-code", "prepare-data",
        "`--builder-kwarg train_size=__import__('os').system(...)`", "prepare-kwarg-value-code",
        2, "train_size must be a positive integer"),
    Row("prepare-openi-hostile", "prepare-data",
        "Open-i archives with `../../`, absolute, symlink, hardlink and FIFO members",
        "prepare-openi-hostile", 0, "prepare-data: open_i"),
]  # fmt: skip


# --- running it ----------------------------------------------------------------------------


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """`cli.main(argv)` in this process: (exit status, stdout, stderr). Any exception other
    than SystemExit propagates: that is a bug, and fails the test with its traceback."""
    from llmcxr_jax import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(argv)
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    """Tiny checkpoints with random weights, drawn in numpy over the models' abstract shapes
    (initialising the modules eagerly takes half a minute on a busy CPU)."""
    import jax

    from llmcxr_jax import checkpoint
    from llmcxr_jax.data import instructions
    from llmcxr_jax.models import common
    from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset
    from llmcxr_jax.models.vqgan import VQGAN
    from llmcxr_jax.models.vqgan import get_preset as vq_preset
    from llmcxr_jax.tokenizer import MultimodalTokenizer

    rng = np.random.default_rng(0)

    def random_variables(model_cls: type, config: object) -> dict:
        shapes = common.variables_of(common.abstract(model_cls, config))
        draw = lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype)  # noqa: E731
        return jax.tree.map(draw, shapes)

    root = tmp_path_factory.mktemp("assets")
    vq_cfg = vq_preset("tiny")
    texts = REPORTS * 5 + list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR)
    tok = MultimodalTokenizer.train_bpe(
        texts + [instructions.INTRO], vocab_size=320, num_image_codes=vq_cfg.n_embed
    )
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, vocab_pad_multiple=128)
    checkpoint.save_params(root / "lm", cfg, random_variables(GPTNeoX, cfg))
    tok.save(root / "lm" / "tokenizer")
    checkpoint.save_params(root / "vq", vq_cfg, random_variables(VQGAN, vq_cfg))
    return Assets(root / "lm", root / "vq", vq_cfg.num_codes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, assets) -> Callable[[str], Ran]:
    done: dict[str, Ran] = {}

    def get(name: str) -> Ran:
        if name not in done:
            tmp = tmp_path_factory.mktemp(name)
            status, out, err = invoke(RUNS[name](tmp, assets))
            done[name] = Ran(tmp, status, out, err)
        return done[name]

    return get


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, runs: Callable[[str], Ran]) -> None:
    ran = runs(row.run)
    context = f"exit {ran.status}\nstdout:\n{ran.out}\nstderr:\n{ran.err}"
    assert ran.status == row.status, context
    assert "Traceback" not in ran.err, context
    lines = ran.err.split("\n")
    # every error line starts a line (not glued to a progress bar's \r output)
    errors = [ln for ln in lines if "error:" in ln]
    assert all(ln.startswith(("error: ", "llmcxr-jax ")) for ln in errors), context
    if row.status == 2:
        assert len(errors) == 1, context
        assert errors[0].startswith(f"llmcxr-jax {row.command.split()[0]}: error: "), context
        assert all(f in errors[0] for f in row.fragments), context
    elif row.status == 1:
        item = str(ran.dir / row.item)
        mine = [ln for ln in errors if ln.startswith(f"error: {item}: ")]
        assert len(mine) == 1, context
        assert mine[0].count(item) == 1, mine[0]  # the item is named once
        assert all(f in mine[0] for f in row.fragments), context
    else:
        assert not errors and all(f in ran.out for f in row.fragments), context
    if row.run in CHECKS:
        CHECKS[row.run](ran.dir)


def test_every_run_is_in_the_table():
    assert {r.run for r in ROWS} == set(RUNS)
    assert len({r.id for r in ROWS}) == len(ROWS)


def test_progress_bars_do_not_hide_error_lines(runs: Callable[[str], Ran]) -> None:
    """The batch drew tqdm bars (\\r ...) on stderr, and still every error line starts one."""
    ran = runs("gen-report-batch")
    assert "\r" in ran.err
    assert ran.err.count("\nerror: ") == len(BAD_IMAGES)
    assert f"{len(BAD_IMAGES)} of {len(BAD_IMAGES) + 1} inputs failed" in ran.err


# --- outputs: replaced only when asked, never half-written -----------------------------------


def test_exports_replace_with_overwrite_and_leave_no_temporary(assets, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "old.txt").write_text("old")
    assert (
        invoke(["export-hf", "--checkpoint", str(assets.lm), "--out", str(hf), "--overwrite"])[0]
        == 0
    )
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "model.safetensors"]
    ckpt = tmp_path / "vq.ckpt"
    ckpt.write_text("old")
    argv = ["export-taming", "--checkpoint", str(assets.vq), "--out", str(ckpt), "--overwrite"]
    assert invoke(argv)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "vq.ckpt", "vq.yaml"]
    assert ckpt.stat().st_size > 1000


def test_written_as_leaves_nothing_when_the_write_fails(tmp_path):
    from llmcxr_jax.cli import written_as

    final = tmp_path / "out.bin"
    final.write_text("before")
    with pytest.raises(KeyboardInterrupt), written_as(final) as (tmp,):
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert final.read_text() == "before" and sorted(tmp_path.iterdir()) == [final]


def test_api_hints_become_flags():
    from llmcxr_jax.cli import cli_words

    assert cli_words("x: no tokenizer.json (pass tokenizer=...)").endswith("(pass --tokenizer DIR)")
    assert "--greedy" in cli_words(
        "sampling needs temperature > 0 (use Sampler.argmax() for greedy)"
    )
    assert "--allow-upscale" in cli_words("is small (pass allow_upscale=True to upscale)")
    assert cli_words("two\n lines") == "two lines"


# --- the user-readable table ---------------------------------------------------------------


def render_doc() -> str:
    """docs/bad-inputs.md: the table above, as a reader wants it."""
    head = """\
# Bad inputs: what each command does with them

Every row below is a case of `tests/test_bad_inputs.py`, which runs it and checks the exit
status and the line; this page is rendered from that table (`python tests/test_bad_inputs.py`)
and a test keeps the two equal.

- **Exit 2**: the command refuses. Its stderr holds exactly one line
  `llmcxr-jax COMMAND: error: MESSAGE`, naming the input and the reason, and no traceback;
  nothing is written (outputs go to a temporary name and are renamed only when complete).
- **Exit 1** (`generate` only): a batch with bad items. Each bad item gets its own line
  `error: ITEM: REASON` (the first problem found with it) and a last line says how many
  failed; the good items complete, their results are printed and written to `--out`.
- **Exit 0**: the input is skipped and counted, and the rest is done (hostile archive members
  are never extracted: the archives are read member by member in memory).

Hostile payloads (pickles whose unpickling would run a command, a YAML `!!python/object/apply`
tag, Python code in `--config.x=` or `--builder-kwarg`) never run: they are refused, or taken
as plain text, and the test checks that the file the payload would create never appears.
Any exception other than these refusals is a bug and shows its traceback.

| Command | Bad input | Exit | What it says |
|---|---|---|---|
"""
    rows = []
    for r in ROWS:
        said = " ... ".join(r.fragments).replace("|", "\\|")
        if r.status == 0:
            said = f"done; the skips counted in the last line, `{said}: ...`"
        elif r.item:
            said = f"its own line `error: .../{Path(r.item).name}: ...{said}`"
        else:
            said = f"`...{said}`"
        rows.append(f"| `{r.command}` | {r.given} | {r.status} | {said} |")
    return head + "\n".join(rows) + "\n"


def test_the_doc_is_the_table():
    assert DOC.read_text(encoding="utf-8") == render_doc(), (
        "docs/bad-inputs.md is out of date: python tests/test_bad_inputs.py"
    )


if __name__ == "__main__":  # python tests/test_bad_inputs.py: rewrite docs/bad-inputs.md
    sys.path.insert(0, str(ROOT))
    DOC.write_text(render_doc(), encoding="utf-8")
    print(f"wrote {DOC}")
