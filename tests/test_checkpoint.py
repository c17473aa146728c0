"""Model checkpoints: exact round trip, restore onto a mesh, and clear errors when damaged."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from llmcxr_jax import checkpoint, sharding
from llmcxr_jax.checkpoint import CheckpointError, DamagedCheckpointError
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset


@pytest.fixture
def saved(tmp_path):
    model = GPTNeoX(get_preset("tiny", vocab_pad_multiple=128), rngs=nnx.Rngs(3))
    checkpoint.save_model(tmp_path / "ckpt", model)
    return model, tmp_path / "ckpt"


def _params(model):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_round_trip_is_bitwise(saved):
    model, path = saved
    back = checkpoint.load_model(path)
    assert back.config == model.config
    for a, b in zip(_params(model), _params(back), strict=True):
        np.testing.assert_array_equal(a, b)


def test_execution_options_change_at_load_but_architecture_does_not(saved):
    _, path = saved
    back = checkpoint.load_model(path, dtype="bfloat16", scan_layers=True)
    assert back.config.dtype == "bfloat16" and back.config.scan_layers
    with pytest.raises(ValueError, match="only execution options"):
        checkpoint.load_model(path, hidden_size=8)


def test_restores_straight_into_mesh_shardings(saved):
    model, path = saved
    mesh = sharding.make_mesh((2, 2, 2))
    back = checkpoint.load_model(path, mesh=mesh)
    w = back.layers.mlp.in_kernel[...]
    assert w.sharding.spec == sharding.logical_to_spec(("layers", "mlp", "embed"), mesh=mesh)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(model.layers.mlp.in_kernel[...]))


def test_stacked_layers_are_stored_and_read_one_at_a_time(saved):
    model, path = saved
    stack = np.asarray(model.layers.mlp.in_kernel[...])
    layers = checkpoint.read_layers(path, ("layers", "mlp", "in_kernel"))
    assert layers is not None  # one chunk per layer (`layer_chunked`)
    got = list(layers)
    assert len(got) == stack.shape[0] == model.config.num_layers
    for i, x in enumerate(got):
        np.testing.assert_array_equal(x, stack[i])
    assert checkpoint.read_layers(path, ("embed_in",)) is None  # not a layer stack


def test_truncated_parameter_file_is_named(saved):
    _, path = saved
    data_files = sorted(
        f for f in (path / "params").rglob("*") if f.is_file() and f.stat().st_size > 1000
    )
    assert data_files
    for f in data_files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with pytest.raises(DamagedCheckpointError, match=str(path / "params")) as e:
        checkpoint.load_model(path)
    msg = str(e.value)  # one line naming the file, not Orbax's 60-line TensorStore spec
    assert len(msg.splitlines()) == 1 and len(msg) < 600, msg
    assert ": file " in msg and "is truncated or damaged (" in msg
    assert "tensorstore" not in msg.lower()


def test_truncated_metadata_file_is_named(saved):
    _, path = saved
    f = path / "params" / "_METADATA"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DamagedCheckpointError) as e:
        checkpoint.load_model(path)
    assert str(e.value).startswith(
        f"checkpoint {path / 'params'}: file _METADATA is truncated or damaged (JSONDecodeError"
    )


def test_a_changed_config_is_a_mismatch_not_damage(saved):
    _, path = saved
    meta = json.loads((path / "model_config.json").read_text())
    meta["config"]["intermediate_size"] *= 2
    (path / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"has shape .*, the config expects") as e:
        checkpoint.load_model(path)
    assert not isinstance(e.value, DamagedCheckpointError)


def test_missing_or_foreign_config_is_named(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="no model_config.json"):
        checkpoint.load_model(tmp_path / "nowhere")
    meta = json.loads((path / "model_config.json").read_text())
    meta["model_type"] = "vqgan"
    (path / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model_type 'vqgan', expected 'gpt_neox'"):
        checkpoint.load_model(path)
    meta["model_type"] = "resnet"
    (path / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model_type 'resnet', expected 'gpt_neox'"):
        checkpoint.load_model(path)
