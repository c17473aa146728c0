"""Logical axis rules, and the sharded model on 8 fake CPU devices equalling one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from llmcxr_jax import sharding
from llmcxr_jax.decode import generate
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset


def test_logical_names_map_through_the_one_table():
    assert sharding.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("layers", "heads", "qkv", "head_dim", "embed")) == P(
        None, "tensor", None, None, "fsdp"
    )
    assert sharding.logical_to_spec(("activation_batch", "activation_length")) == P(
        ("data", "fsdp"), None
    )
    # a mesh axis serves one dimension only: the second asker is replicated
    assert sharding.logical_to_spec(("vocab", "heads")) == P("tensor", None)
    with pytest.raises(KeyError, match="no rule"):
        sharding.logical_to_spec(("nonsense",))


def test_make_mesh_shapes_and_errors():
    mesh = sharding.make_mesh((2, -1, 1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert dict(sharding.make_mesh({"tensor": 4}).shape) == {"data": 1, "fsdp": 1, "tensor": 4}
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((4, 4, 1))
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 2})


def _model():
    cfg = get_preset("tiny", vocab_size=250, vocab_pad_multiple=128, intermediate_size=96)
    model = GPTNeoX(cfg, rngs=nnx.Rngs(0))
    # non-trivial norms and biases so every parameter matters
    state = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(1), 64))
    state = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), state)
    nnx.update(model, state)
    return model


@pytest.mark.parametrize("mesh_shape", [(2, 1, 4), (1, 2, 4), (2, 4, 1)])
def test_sharded_forward_equals_single_device(mesh_shape):
    model = _model()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 250, (8, 16)))
    ref, _ = model(tokens)

    mesh = sharding.make_mesh(mesh_shape)
    graphdef, state = nnx.split(model)
    state = sharding.shard_state(state, mesh)
    qkv = state["layers"]["attention"]["qkv_kernel"][...]
    assert qkv.sharding.spec == sharding.logical_to_spec(
        ("layers", "heads", "qkv", "head_dim", "embed"), mesh=mesh
    )
    assert len(qkv.sharding.device_set) == 8

    @jax.jit
    def forward(state, tokens):
        return nnx.merge(graphdef, state)(tokens)[0]

    with jax.set_mesh(mesh):
        batch_sharding = sharding.logical_sharding(mesh, ("activation_batch", None))
        out = forward(state, jax.device_put(tokens, batch_sharding))
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_sharded_generation_equals_single_device():
    model = _model()
    prompts = np.random.default_rng(1).integers(0, 250, (4, 6))
    ref = generate(model, prompts, max_new_tokens=8).tokens
    mesh = sharding.make_mesh((2, 1, 4))
    graphdef, state = nnx.split(model)
    sharded = nnx.merge(graphdef, sharding.shard_state(state, mesh))
    with jax.set_mesh(mesh):
        out = generate(sharded, prompts, max_new_tokens=8).tokens
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
