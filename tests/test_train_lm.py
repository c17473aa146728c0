"""LM training at scale, on 8 fake CPU devices: mesh equivalence, exact resume, stage 2."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from lm_data import prepare

from llmcxr_jax import checkpoint
from llmcxr_jax.configs import load
from llmcxr_jax.train import lm
from llmcxr_jax.train import state_checkpoint as train_ckpt
from llmcxr_jax.train.metric_writers import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo.py") + ":test"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("lmdata"))


def _config(data_dir, *extra):
    return load(CONFIG, [f"--config.data.data_dir={data_dir}", *extra])


def test_2x4_mesh_gives_the_single_device_loss_curve(data_dir, tmp_path):
    common = ["--config.data.batch_size=8", "--config.eval_every=0", "--config.ckpt_every=100"]
    lm.train(_config(data_dir, *common), tmp_path / "one", progress=False)
    lm.train(_config(data_dir, *common, "--config.mesh=(2,4,1)"), tmp_path / "mesh", progress=False)
    a = [m["loss"] for m in read_metrics(tmp_path / "one") if "loss" in m]
    b = [m["loss"] for m in read_metrics(tmp_path / "mesh") if "loss" in m]
    assert len(a) == len(b) == 20
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    assert a[-1] < a[0]


def _run(workdir, data_dir):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmcxr_jax.cli",
            "train",
            "--config",
            CONFIG,
            "--workdir",
            str(workdir),
            f"--config.data.data_dir={data_dir}",
            "--config.steps=30",
            "--config.ckpt_every=10",
            "--config.eval_every=0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def _final(workdir):
    ckpt = train_ckpt.TrainCheckpointer(workdir, every=10)
    step = ckpt.steps()[-1]
    flat, extra = ckpt.read_flat(step)
    ckpt.close()
    return step, flat


def test_sigterm_then_restart_is_bitwise_an_uninterrupted_run(data_dir, tmp_path):
    ref = _run(tmp_path / "ref", data_dir)
    out = ref.communicate(timeout=600)[0]
    assert ref.returncode == 0, out
    proc = _run(tmp_path / "run", data_dir)
    deadline = time.time() + 600
    while time.time() < deadline:
        logged = read_metrics(tmp_path / "run")
        if logged and logged[-1].get("step", 0) >= 13:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "SIGTERM: saved step" in out, out
    killed_at = train_ckpt.TrainCheckpointer(tmp_path / "run", every=10).steps()[-1]
    assert 13 <= killed_at < 30
    again = _run(tmp_path / "run", data_dir)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0 and f"checkpoints/{killed_at}" in out, out
    (sa, a), (sb, b) = _final(tmp_path / "ref"), _final(tmp_path / "run")
    assert sa == sb == 30 and a.keys() == b.keys()
    for k in a:  # parameters, optimizer state, step: bitwise (data order included)
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def _zero(step_dir):
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(b"\0" * f.stat().st_size)


def _assert_same_checkpoints(a_dir, b_dir, steps):
    a_ck = train_ckpt.TrainCheckpointer(a_dir, every=5)
    b_ck = train_ckpt.TrainCheckpointer(b_dir, every=5)
    assert a_ck.steps() == b_ck.steps() == steps
    for step in steps:  # parameters, optimizer state, data position: bitwise
        (a, ea), (b, eb) = a_ck.read_flat(step), b_ck.read_flat(step)
        assert a.keys() == b.keys() and ea == eb
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"{step} {k}")
    a_ck.close()
    b_ck.close()


def test_corrupt_newest_checkpoint_falls_back(data_dir, tmp_path, library_log):
    """One damaged checkpoint, then all of them: each is moved aside and rewritten, and the run
    ends bitwise where an uninterrupted one does."""
    config = _config(data_dir, "--config.steps=12", "--config.eval_every=0")
    lm.train(config, tmp_path / "ref", progress=False)
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    config.steps = 10
    lm.train(config, run, progress=False)
    assert train_ckpt.TrainCheckpointer(run, every=5).steps() == [5, 10]
    _zero(ckpts / "10")
    library_log()
    config.steps = 12
    lm.train(config, run, progress=False)
    out = library_log()
    assert f"checkpoint {ckpts}/10" in out and "truncated or damaged" in out, out
    assert f"resumed from {ckpts}/5" in out
    assert (ckpts / "10.damaged").is_dir()
    _assert_same_checkpoints(tmp_path / "ref", run, [5, 10, 12])

    for step in (5, 10, 12):  # every checkpoint damaged: a fresh start, said so
        _zero(ckpts / str(step))
    lm.train(config, run, progress=False)
    out = library_log()
    assert f"no usable checkpoint in {ckpts}: step(s) 12, 10, 5 damaged" in out, out
    assert "starting from step 0" in out and "resumed from" not in out
    assert {p.name for p in ckpts.iterdir()} == {
        "5",
        "10",
        "12",
        "5.damaged",
        "10.damaged",
        "10.damaged-2",
        "12.damaged",
    }
    _assert_same_checkpoints(tmp_path / "ref", run, [5, 10, 12])


def test_stage2_starts_from_stage1_parameters_with_a_fresh_optimizer(data_dir, tmp_path):
    lm.train(
        _config(data_dir, "--config.steps=5", "--config.eval_every=0"),
        tmp_path / "s1",
        progress=False,
    )
    stage1 = checkpoint.load_model(tmp_path / "s1" / "model")
    config = _config(
        data_dir,
        "--config.steps=1",
        "--config.eval_every=0",
        f"--config.init.params_from={tmp_path / 's1'}",
        f"--config.tokenizer.path={tmp_path / 's1' / 'tokenizer'}",
    )
    config.data.stage = 2
    config.optim.lr = 0.0  # one step that changes nothing: the start is the stage-1 model
    config.optim.min_lr = 0.0
    config.optim.weight_decay = 0.0
    lm.train(config, tmp_path / "s2", progress=False)
    _, flat = _final(tmp_path / "s2")
    counts = [int(flat[k]) for k in flat if "opt_state" in k and k.endswith(".count")]
    assert counts and set(counts) == {1}  # Adam's step count restarted: a fresh optimizer
    assert int(flat[".step"]) == 1
    stage2 = checkpoint.load_model(tmp_path / "s2" / "model")
    np.testing.assert_array_equal(
        np.asarray(stage2.embed_out[...]), np.asarray(stage1.embed_out[...])
    )


def test_training_writes_sample_generations(data_dir, tmp_path):
    import json

    from flax import nnx

    from llmcxr_jax.models.vqgan import VQGAN, get_preset

    checkpoint.save_model(tmp_path / "vq", VQGAN(get_preset("demo-f8"), rngs=nnx.Rngs(1)))
    config = _config(
        data_dir,
        "--config.steps=5",
        "--config.eval_every=5",
        "--config.sample_every=5",
        f"--config.vqgan={tmp_path / 'vq'}",
    )
    metrics = lm.train(config, tmp_path / "w", progress=False)
    assert np.isfinite(metrics["eval_loss"])
    sample = json.loads((tmp_path / "w" / "samples" / "step_000005.json").read_text())
    codes = np.asarray(sample["generated_codes"])
    assert codes.shape == (64,) and codes.min() >= 0 and codes.max() < 256
    assert isinstance(sample["generated_report"], str)
    assert (tmp_path / "w" / "samples" / "step_000005.png").stat().st_size > 100


def _random_checkpoint(path, model_cls, config, std, seed):
    """A model checkpoint of N(0, std^2) variables, without running the model's initialisers."""
    import jax
    from flax import nnx

    from llmcxr_jax.models import common

    rng = np.random.default_rng(seed)
    abstract = nnx.to_pure_dict(nnx.state(common.abstract(model_cls, config)))
    tree = jax.tree.map(lambda a: (std * rng.standard_normal(a.shape)).astype(a.dtype), abstract)
    checkpoint.save_params(path, config, tree)
    return tree


def test_build_model_initialises_image_rows_from_the_vqgan_codebook(tmp_path, library_log):
    from llmcxr_jax import sharding
    from llmcxr_jax.image_embeddings import codebook_embeddings
    from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset
    from llmcxr_jax.models.vqgan import VQGAN
    from llmcxr_jax.models.vqgan import get_preset as vq_preset
    from llmcxr_jax.tokenizer import MultimodalTokenizer

    vq = _random_checkpoint(tmp_path / "vq", VQGAN, vq_preset("tiny"), 1.0, 0)
    codebook = vq["quantize"]["embedding"]["embedding"]  # [64, 32]
    texts = ["Heart size normal. Lungs clear.", "Small left pleural effusion."] * 5
    tok = MultimodalTokenizer.train_bpe(texts, vocab_size=300, num_image_codes=codebook.shape[0])
    mesh = sharding.make_mesh((2, 4, 1))
    lo, hi = tok.image_range
    small = {"dtype": "float32", "hidden_size": 64, "num_layers": 1, "intermediate_size": 128}

    def build(*extra, model_overrides=small, tok=tok):
        config = load(CONFIG, list(extra))
        config.model_overrides = model_overrides
        return config, lm.build_model(config, tok, mesh)

    with_vq = ["--config.init.image_embeddings=codebook", f"--config.init.vqgan={tmp_path / 'vq'}"]
    config, plain = build()
    _, model = build(*with_vq)
    assert "image-token embeddings (embed_in rows" in library_log()
    want = codebook_embeddings(codebook, 64, std=model.config.initializer_range, seed=config.seed)
    emb, ref = np.asarray(model.embed_in[...]), np.asarray(plain.embed_in[...])
    np.testing.assert_allclose(emb[lo:hi], want, rtol=1e-6)
    np.testing.assert_array_equal(emb[:lo], ref[:lo])
    np.testing.assert_array_equal(emb[hi:], ref[hi:])
    np.testing.assert_array_equal(
        np.asarray(model.embed_out[...]), np.asarray(plain.embed_out[...])
    )
    assert model.embed_in[...].sharding == plain.embed_in[...].sharding  # sharded as before

    # an imported text-only LM: grown by the codes, their rows at its text rows' scale
    text_cfg = get_preset("tiny", vocab_size=tok.text_vocab_size, num_layers=1)
    text_lm = _random_checkpoint(tmp_path / "text_lm", GPTNeoX, text_cfg, 0.05, 1)
    _, grown = build(
        "--config.init.image_embeddings=codebook_both",
        f"--config.init.vqgan={tmp_path / 'vq'}",
        f"--config.init.checkpoint={tmp_path / 'text_lm'}",
        model_overrides={},
    )
    for name in ("embed_in", "embed_out"):
        old, new = text_lm[name], np.asarray(getattr(grown, name)[...])
        want = codebook_embeddings(codebook, 64, std=float(old[:lo].std()), seed=config.seed)
        np.testing.assert_allclose(new[lo:hi], want, rtol=1e-5, atol=1e-8)
        np.testing.assert_array_equal(new[:lo], old[:lo])

    # stage 2 (params_from) keeps the trained rows
    checkpoint.save_model(tmp_path / "s1", model)
    _, s2 = build(*with_vq, f"--config.init.params_from={tmp_path / 's1'}")
    assert "not applied" in library_log()
    for name in ("embed_in", "embed_out"):
        np.testing.assert_array_equal(
            np.asarray(getattr(s2, name)[...]), np.asarray(getattr(model, name)[...])
        )

    with pytest.raises(ValueError, match="needs init.vqgan"):
        build("--config.init.image_embeddings=codebook")
    other = MultimodalTokenizer.train_bpe(texts, vocab_size=300, num_image_codes=256)
    with pytest.raises(ValueError, match="codebook has 64 entries but the tokenizer has 256"):
        build(*with_vq, tok=other)


def test_every_host_takes_both_tokenizer_barriers_when_the_file_appears_meanwhile(
    data_dir, tmp_path, monkeypatch
):
    """The race CI hit on 2 hosts: the primary wrote the tokenizer between another host's
    first barrier and its look, that host returned early, skipped the second barrier, and the
    hosts' collectives fell out of step. Here the first barrier itself writes the file (as a
    faster primary would); the barriers taken must be the same as when nobody writes."""
    config = _config(data_dir)
    records = lm.open_records(config.data, config.data.split)
    made = lm.load_tokenizer(config, records, tmp_path / "primary", config.data.num_image_codes)

    taken: list[str] = []

    def barrier(name):
        taken.append(name)
        if name == "llmcxr_tokenizer_looked":  # the primary finishes first and writes its file
            made.save(tmp_path / "other" / "tokenizer")

    monkeypatch.setattr(lm.distributed, "barrier", barrier)
    lm.load_tokenizer(config, records, tmp_path / "other", config.data.num_image_codes)
    assert taken == ["llmcxr_tokenizer_looked", "llmcxr_tokenizer_saved"]
    # and a resumed run (file there before anyone looks) takes the first barrier only, on every host
    taken.clear()
    monkeypatch.setattr(lm.distributed, "barrier", taken.append)
    again = lm.load_tokenizer(config, records, tmp_path / "other", config.data.num_image_codes)
    assert taken == ["llmcxr_tokenizer_looked"]
    assert again.num_image_codes == made.num_image_codes
