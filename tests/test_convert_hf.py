"""import-hf / export-hf: round trips through transformers, file layouts, and clear errors."""

import datetime
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import tiny_hf_model
from safetensors.numpy import load_file, save_file

from llmcxr_jax import checkpoint, cli
from llmcxr_jax.convert import hf_gpt_neox, mapping
from llmcxr_jax.convert.hf_gpt_neox import ConversionError, import_hf, load_hf_model

TOKENS = np.random.default_rng(0).integers(0, 211, (2, 19))


def _logits(hf_model, tokens=TOKENS):
    with torch.no_grad():
        return hf_model(torch.tensor(tokens)).logits.numpy()


def _state(hf_model):
    return {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}


def test_import_export_round_trip_is_exact(tmp_path):
    hf = tiny_hf_model(parallel=False, rotary_pct=0.5)
    hf.save_pretrained(tmp_path / "hf")
    cli.main(["import-hf", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")])
    cli.main(["export-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    back = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert back.config.vocab_size == 211
    assert back.config.use_parallel_residual is False
    before, after = _state(hf), _state(back)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    np.testing.assert_array_equal(_logits(back), _logits(hf))
    # the checkpoint in between computes the same logits too (its tables are padded to 256 rows)
    model = checkpoint.load_model(tmp_path / "ckpt")
    assert model.embed_in.shape == (256, 64)
    ours, _ = model(jnp.asarray(TOKENS))
    np.testing.assert_allclose(np.asarray(ours)[..., :211], _logits(hf), atol=1e-4)


def test_resized_vocabulary_round_trip(tmp_path):
    hf = tiny_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    cli.main(
        [
            "import-hf",
            "--hf-dir",
            str(tmp_path / "hf"),
            "--out",
            str(tmp_path / "ckpt"),
            "--vocab-size",
            "300",
            "--vocab-pad-multiple",
            "128",
            "--seed",
            "3",
        ]
    )
    model = checkpoint.load_model(tmp_path / "ckpt")
    assert (model.config.vocab_size, model.config.padded_vocab_size) == (300, 384)
    embed = np.asarray(model.embed_in[...])
    np.testing.assert_array_equal(embed[:211], _state(hf)["gpt_neox.embed_in.weight"])
    assert abs(embed[211:300].std() - 0.02) < 0.003  # new rows N(0, 0.02)
    assert not embed[300:].any()  # padding rows

    cli.main(["export-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    back = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert back.get_input_embeddings().weight.shape == (300, 64)  # true size, no padding rows
    tokens = np.random.default_rng(1).integers(0, 300, (2, 23))  # new ids included
    ours, _ = model(jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(ours)[..., :300], _logits(back, tokens), atol=1e-4)
    # the original vocabulary's part of the model is unchanged
    old = tokens % 211
    np.testing.assert_allclose(_logits(back, old)[..., :211], _logits(hf, old), atol=1e-5)


def test_reads_bin_sharded_and_transformers4_configs(tmp_path):
    hf = tiny_hf_model(rotary_pct=1.0)
    ref = _logits(hf)
    sd = hf.state_dict()
    hf.save_pretrained(tmp_path / "safetensors")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()

    # pytorch_model.bin with a transformers 4.x config (rotary_pct, rotary_emb_base, embed_out)
    cfg4 = json.loads((tmp_path / "safetensors" / "config.json").read_text())
    cfg4.pop("rope_parameters", None)
    cfg4.update(rotary_pct=1.0, rotary_emb_base=10000, transformers_version="4.40.0")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps(cfg4))
    old_names = {
        ("embed_out.weight" if k == "lm_head.weight" else k): v.clone() for k, v in sd.items()
    }
    old_names["gpt_neox.layers.0.attention.masked_bias"] = torch.tensor(-1e9)  # old buffers
    torch.save(old_names, tmp_path / "bin" / "pytorch_model.bin")

    # sharded .bin with its index
    (tmp_path / "bin_sharded").mkdir()
    (tmp_path / "bin_sharded" / "config.json").write_text(json.dumps(cfg4))
    keys = sorted(old_names)
    parts = {"a.bin": keys[: len(keys) // 2], "b.bin": keys[len(keys) // 2 :]}
    for f, ks in parts.items():
        torch.save({k: old_names[k] for k in ks}, tmp_path / "bin_sharded" / f)
    index = {"weight_map": {k: f for f, ks in parts.items() for k in ks}}
    (tmp_path / "bin_sharded" / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    for layout in ("safetensors", "sharded", "bin", "bin_sharded"):
        model = load_hf_model(tmp_path / layout)
        assert model.config.rotary_pct == 1.0, layout
        ours, _ = model(jnp.asarray(TOKENS))
        np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, err_msg=layout)


def test_legacy_non_zip_pytorch_model_bin_is_read(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False): not memory-mappable, read whole."""
    hf = tiny_hf_model(rotary_pct=1.0)
    hf.save_pretrained(tmp_path / "st")
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    f = tmp_path / "legacy" / "pytorch_model.bin"
    torch.save(
        {k: v.clone() for k, v in hf.state_dict().items()}, f, _use_new_zipfile_serialization=False
    )
    assert f.read_bytes()[:4] != b"PK\x03\x04"
    ours, _ = load_hf_model(tmp_path / "legacy")(jnp.asarray(TOKENS))
    np.testing.assert_allclose(np.asarray(ours), _logits(hf), atol=1e-4)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_object_is_refused_naming_the_global(tmp_path, legacy):
    f = tmp_path / "model.ckpt"
    obj = {"state_dict": {"w": torch.zeros(2)}, "when": datetime.date(2024, 1, 2)}
    torch.save(obj, f, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ConversionError) as e:
        mapping.load_torch_state_dict(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: not a readable weights-only PyTorch file (")
    assert "datetime.date" in msg and "nothing in it was run" in msg, msg
    assert len(msg.splitlines()) == 1 and "\x1b" not in msg
    (tmp_path / "x.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match=r"x\.bin: .*or damaged: Unsupported operand"):
        mapping.torch_load(tmp_path / "x.bin", mmap=True)
    (tmp_path / "cut.bin").write_bytes(f.read_bytes()[:100])
    with pytest.raises(ConversionError, match=r"cut\.bin: .*or damaged: \w+Error"):
        mapping.torch_load(tmp_path / "cut.bin")


def test_bfloat16_export_loads(tmp_path):
    hf = tiny_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    config, params = import_hf(tmp_path / "hf")
    hf_gpt_neox.export_hf(
        config, params, tmp_path / "out", dtype="bfloat16", max_shard_bytes=40_000
    )
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()  # sharded on export
    back = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    np.testing.assert_allclose(_logits(back.eval()), _logits(hf), atol=0.1)


# ---- bad input: each error names the key (or file) and the shapes --------------------------


@pytest.fixture
def hf_dir(tmp_path):
    tiny_hf_model().save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _edit_weights(hf_dir, edit):
    f = hf_dir / "model.safetensors"
    tensors = load_file(f)
    edit(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def test_missing_tensor_is_named(hf_dir):
    _edit_weights(hf_dir, lambda t: t.pop("gpt_neox.layers.1.mlp.dense_4h_to_h.weight"))
    with pytest.raises(
        ConversionError,
        match=r"missing tensor gpt_neox\.layers\.1\.mlp\."
        r"dense_4h_to_h\.weight \(expected shape \(64, 96\)\)",
    ):
        import_hf(hf_dir)


def test_wrong_shape_is_named(hf_dir):
    def edit(t):
        t["gpt_neox.layers.0.attention.query_key_value.weight"] = np.zeros((192, 60), np.float32)

    _edit_weights(hf_dir, edit)
    with pytest.raises(
        ConversionError,
        match=r"query_key_value\.weight has shape \(192, 60\), "
        r"expected \(192, 64\)",
    ):
        import_hf(hf_dir)


def test_unexpected_tensor_is_named(hf_dir):
    _edit_weights(hf_dir, lambda t: t.update({"gpt_neox.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ConversionError, match=r"unexpected tensors \['gpt_neox\.extra\.weight'\]"):
        import_hf(hf_dir)


def test_unknown_architecture_is_named(hf_dir, capsys):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        cli.main(["import-hf", "--hf-dir", str(hf_dir), "--out", str(hf_dir / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown architecture (model_type='llama'" in err and "config.json" in err


def test_truncated_weights_file_is_named(hf_dir):
    f = hf_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r"model\.safetensors"):
        import_hf(hf_dir)


def test_existing_checkpoint_is_not_overwritten(hf_dir, tmp_path):
    args = ["import-hf", "--hf-dir", str(hf_dir), "--out", str(tmp_path / "ckpt")]
    cli.main(args)
    with pytest.raises(SystemExit):
        cli.main(args)
    cli.main(args + ["--overwrite"])


def test_every_rule_is_its_own_inverse():
    """One table serves both directions: to_torch(to_jax(x)) == x for every rule."""
    from llmcxr_jax.models.gpt_neox import abstract_model, get_preset

    c = get_preset("tiny", vocab_size=200, vocab_pad_multiple=128)
    shapes = hf_gpt_neox._our_shapes(c)
    assert set(shapes) == {r.path for r in hf_gpt_neox.active_rules(c)}  # table covers the model
    rng = np.random.default_rng(0)
    for rule in hf_gpt_neox.active_rules(c):
        hf_shape = mapping.torch_shape(rule, shapes[rule.path], c)
        x = rng.normal(size=hf_shape).astype(np.float32)
        ours = rule.transform.to_jax(x, c)
        want = shapes[rule.path][1:] if rule.per_layer else shapes[rule.path]
        assert ours.shape == want, rule.key
        np.testing.assert_array_equal(rule.transform.to_torch(ours, c), x, err_msg=rule.key)
    assert abstract_model(c).embed_out.shape == (256, 64)
