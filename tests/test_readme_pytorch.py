"""docs/pytorch.md ("Use the weights in PyTorch"): its bash and python blocks run as written.

Tiny random stand-ins take the demo's places (`demo-out/stage2/model` with its tokenizer,
`demo-out/vqgan/model`) in a temporary directory; the bash block runs there with the
`llmcxr-jax` console script on PATH, then the python block (PyTorch, transformers, taming only)
runs with this interpreter. The tiny VQ-GAN has 16x16 = 256 codes per image, not the demo's 64,
so a hard-coded h*w would fail. A few checks are appended to the python block: its prompts are
the ids this project's tokenizer gives, its image has h*w codes, its report is text only.
"""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("taming.modules.vqvae.quantize")
pytest.importorskip("taming.modules.diffusionmodules.model")

from flax import nnx  # noqa: E402
from PIL import Image  # noqa: E402

from llmcxr_jax import checkpoint  # noqa: E402
from llmcxr_jax.data import instructions  # noqa: E402
from llmcxr_jax.models import gpt_neox, vqgan  # noqa: E402
from llmcxr_jax.tokenizer import MultimodalTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Use the weights in PyTorch"
MARK = "README-CHECKS:"
REPORTS = (
    "The heart is enlarged. No pleural effusion.",
    "Lungs are clear. No pneumothorax.",
    "Moderate cardiomegaly. Small left pleural effusion with basal atelectasis.",
)

# Appended to the README's python block: runs in its namespace.
CHECKS = f"""
import json as _json
from llmcxr_jax.data import instructions as _ins
from llmcxr_jax.tokenizer import MultimodalTokenizer as _MT

_mt = _MT.from_pretrained("./demo-out/stage2/model/tokenizer")
assert (first_code, n_embed, lm.config.vocab_size) == (
    _mt.text_vocab_size, _mt.num_image_codes, _mt.vocab_size)
_codes = (image_ids - first_code).numpy()
assert _codes.min() >= 0 and _codes.max() < n_embed, _codes
_want = _mt.encode_paragraph(_ins.report_to_cxr_prompt(report))[0].tolist()
assert ids(prompt(REPORT_TO_CXR[0], report)) + ids("<") == _want + [_mt.image_begin_id]
assert x[0].tolist() == _mt.encode_paragraph(_ins.cxr_to_report_prompt(_codes))[0].tolist()
assert report_ids and all(i < first_code for i in report_ids), report_ids
print({MARK!r} + _json.dumps(dict(
    n_codes=len(_codes), report_ids=report_ids, report=_mt.decode_text(report_ids).strip())))
"""


def readme_blocks() -> dict[str, str]:
    text = "\n" + (ROOT / "docs" / "pytorch.md").read_text()
    assert text.count(f"\n{SECTION}\n") == 1, f"docs/pytorch.md has no single {SECTION!r} section"
    section = text.split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", section, flags=re.M | re.S)
    langs = [lang for lang, _ in blocks]
    assert sorted(langs) == ["bash", "python"], langs
    return dict(blocks)


def make_standins(root: Path) -> tuple[MultimodalTokenizer, vqgan.VQGANConfig]:
    """What `make demo` leaves, in miniature: an LM with its tokenizer, and a VQ-GAN."""
    vq_cfg = vqgan.get_preset("tiny")  # 32x32 px, f2: 16x16 = 256 codes, codebook 64
    texts = [
        instructions.paragraph_text(ins, src, dst)
        for r in REPORTS
        for ins, src, dst in [
            *((i, "<image>", r) for i in instructions.CXR_TO_REPORT),
            *((i, r, "<image>") for i in instructions.REPORT_TO_CXR),
        ]
    ]
    tok = MultimodalTokenizer.train_bpe(texts, vocab_size=300, num_image_codes=vq_cfg.n_embed)
    lm_cfg = gpt_neox.get_preset(
        "tiny", vocab_size=tok.vocab_size, vocab_pad_multiple=128, max_position_embeddings=1024
    )
    model_dir = root / "demo-out" / "stage2" / "model"
    checkpoint.save_model(model_dir, gpt_neox.GPTNeoX(lm_cfg, rngs=nnx.Rngs(0)))
    tok.save(model_dir / "tokenizer")
    checkpoint.save_model(root / "demo-out/vqgan/model", vqgan.VQGAN(vq_cfg, rngs=nnx.Rngs(1)))
    return tok, vq_cfg


def _env(tmp_path: Path) -> dict[str, str]:
    """PATH with the `llmcxr-jax` beside this interpreter first (or a shim running the CLI)."""
    bindir = Path(sys.executable).parent
    if not (bindir / "llmcxr-jax").exists():
        bindir = tmp_path / "bin"
        bindir.mkdir()
        shim = bindir / "llmcxr-jax"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m llmcxr_jax.cli "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    path = os.pathsep.join([str(bindir), os.environ.get("PATH", "")])
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(
        os.environ,
        PATH=path,
        PYTHONPATH=pythonpath,
        PYTHONIOENCODING="utf-8",
        JAX_PLATFORMS="cpu",
        HF_HUB_OFFLINE="1",
    )


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, errors="replace", timeout=300
    )
    assert r.returncode == 0, f"{args[:2]} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_readme_pytorch_section_runs(tmp_path):
    blocks = readme_blocks()
    tok, vq_cfg = make_standins(tmp_path)
    env = _env(tmp_path)

    _run(["bash", "-euo", "pipefail", "-c", blocks["bash"]], tmp_path, env)
    out = tmp_path / "demo-out"
    for f in ("hf/config.json", "hf/tokenizer.json", "taming/vqgan.ckpt", "taming/vqgan.yaml"):
        assert (out / f).is_file(), f

    script = tmp_path / "readme_pytorch.py"
    script.write_text(blocks["python"] + "\n" + CHECKS)
    stdout = _run([sys.executable, str(script)], tmp_path, env)

    printed, _, result = stdout.rpartition(MARK)
    result = json.loads(result)
    assert result["n_codes"] == vq_cfg.num_codes == 256
    ids = result["report_ids"]
    assert not tok.is_image(ids).any()
    assert result["report"] and tok.decode_text(ids).strip() == result["report"]
    assert result["report"] in printed  # what the README prints is that report

    with Image.open(out / "generated.png") as im:
        assert im.size == (vq_cfg.resolution, vq_cfg.resolution)
        assert im.mode == "RGB"
