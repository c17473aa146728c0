"""The pure train step: masked token-level loss, exact micro-batching, skipped bad updates."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset
from llmcxr_jax.train import lm_step, optim


def _batch(seed=0, b=4, t=24, v=256):
    rng = np.random.default_rng(seed)
    seg = np.ones((b, t), np.int32)
    seg[:, t // 2 :] = 2
    seg[:, -3:] = 0
    pos = np.concatenate([np.arange(t // 2), np.arange(t - t // 2)])[None].repeat(b, 0)
    mask = (rng.random((b, t)) < 0.6).astype(np.int32) * (seg > 0)
    return {
        "tokens": jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32),
        "loss_mask": jnp.asarray(mask),
        "segment_ids": jnp.asarray(seg),
        "positions": jnp.asarray(pos, jnp.int32),
    }


@pytest.fixture
def setup():
    model = GPTNeoX(get_preset("tiny"), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def test_loss_is_the_masked_token_mean_by_hand(setup):
    graphdef, params = setup
    batch = _batch()
    total, aux = lm_step.loss_sums(graphdef, params, batch, 0.0)
    logits, _ = nnx.merge(graphdef, params)(
        batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
    ce = -np.take_along_axis(np.asarray(logp), np.asarray(batch["targets"])[..., None], -1)[..., 0]
    m = np.asarray(batch["loss_mask"])
    np.testing.assert_allclose(total, (ce * m).sum(), rtol=1e-5)
    assert aux["tokens"] == m.sum()


def test_micro_batches_give_the_same_step(setup):
    graphdef, params = setup
    tx = optax.sgd(1.0)  # linear in the gradient: compares the gradients themselves
    batch = _batch(b=4)
    outs = []
    for k in (1, 2, 4):
        step = jax.jit(lm_step.make_train_step(graphdef, tx, lm_step.LossConfig(micro_batches=k)))
        state, metrics = step(lm_step.init_state(params, tx), batch, jax.random.key(0))
        outs.append((state, metrics))
    for state, metrics in outs[1:]:
        np.testing.assert_allclose(metrics["loss"], outs[0][1]["loss"], rtol=1e-5)
        for a, b in zip(
            jax.tree.leaves(state.params), jax.tree.leaves(outs[0][0].params), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_non_finite_step_is_skipped_and_counted(setup):
    graphdef, params = setup
    tx = optax.sgd(0.1)
    step = jax.jit(lm_step.make_train_step(graphdef, tx, lm_step.LossConfig()))
    state = lm_step.init_state(params, tx)
    bad = dict(_batch())
    bad["tokens"] = bad["tokens"].at[0, 0].set(10**6)  # out of vocabulary: NaN embedding
    state2, metrics = step(state, bad, jax.random.key(0))
    assert not np.isfinite(float(metrics["loss"])) and int(state2.skipped) == 1
    for a, b in zip(jax.tree.leaves(state2.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    state3, _ = step(state2, _batch(), jax.random.key(0))
    assert int(state3.skipped) == 1 and int(state3.step) == 2
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state3.params), jax.tree.leaves(params), strict=True)
    )


def test_loss_goes_down(setup):
    graphdef, params = setup
    tx = optax.adamw(3e-3)
    step = jax.jit(lm_step.make_train_step(graphdef, tx, lm_step.LossConfig(z_loss=1e-4)))
    state = lm_step.init_state(params, tx)
    batch = _batch()
    losses = []
    for _ in range(30):
        state, m = step(state, batch, jax.random.key(0))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_deepspeed_log_warmup_by_hand():
    c = ml_collections.ConfigDict(
        {"lr": 5e-6, "min_lr": 0.0, "warmup_steps": 50, "warmup": "log", "decay": "constant"}
    )
    s = optim.schedule(c)
    for t in (0, 1, 9, 49):
        np.testing.assert_allclose(s(t), 5e-6 * np.log(t + 1) / np.log(50), rtol=1e-6)
    assert float(s(50)) == float(s(5000)) == pytest.approx(5e-6)
    c.update(warmup="linear", decay="cosine", decay_steps=100, min_lr=1e-7)
    s = optim.schedule(c)
    np.testing.assert_allclose(s(24), 1e-7 + (5e-6 - 1e-7) * 25 / 50, rtol=1e-6)
    np.testing.assert_allclose(
        s(100), 1e-7 + 0.5 * (5e-6 - 1e-7) * (1 + np.cos(np.pi * 0.5)), rtol=1e-5
    )
    np.testing.assert_allclose(s(1000), 1e-7, rtol=1e-6)


def _step_outputs(graphdef, params, batch, cfg):
    tx = optax.sgd(1.0)  # linear in the gradient: compares the gradients themselves
    step = jax.jit(lm_step.make_train_step(graphdef, tx, cfg))
    return step(lm_step.init_state(params, tx), batch, jax.random.key(0))


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_gathered_loss_positions_give_the_full_step(setup, micro_batches):
    graphdef, params = setup
    batch = _batch(b=4)
    frac = float(np.asarray(batch["loss_mask"]).mean())
    ref_state, ref = _step_outputs(graphdef, params, batch, lm_step.LossConfig(z_loss=1e-3))
    # a buffer that holds every target (gathered path), and one too small (the full path)
    for f, overflow in ((min(1.0, frac + 0.15), 0.0), (frac / 2, float(micro_batches))):
        cfg = lm_step.LossConfig(z_loss=1e-3, micro_batches=micro_batches, max_loss_fraction=f)
        state, m = _step_outputs(graphdef, params, batch, cfg)
        assert float(m["loss_overflow"]) == overflow
        for k in ("loss", "ce", "accuracy", "tokens"):
            np.testing.assert_allclose(m[k], ref[k], rtol=1e-5, err_msg=k)
        for a, b in zip(
            jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_gathered_slots_beyond_the_count_carry_no_weight(setup):
    graphdef, params = setup
    batch = dict(_batch(b=2))
    mask = np.zeros((2, 24), np.int32)
    mask[1, 5] = 1  # one target: every other slot repeats position 0, whose target is unmasked
    batch["loss_mask"] = jnp.asarray(mask)
    full, aux_full = lm_step.loss_sums(graphdef, params, batch, 0.0)
    total, aux = lm_step.loss_sums(graphdef, params, batch, 0.0, max_loss_fraction=0.25)
    assert float(aux["loss_overflow"]) == 0.0 and float(aux["tokens"]) == 1.0
    np.testing.assert_allclose(total, full, rtol=1e-6)


def test_loss_config_from_a_run_config_and_bad_values():
    c = ml_collections.ConfigDict({"z_loss": 1e-4, "micro_batches": 2, "max_loss_fraction": 0.3})
    assert lm_step.LossConfig.from_config(c) == lm_step.LossConfig(1e-4, 2, 0.3)
    assert lm_step.LossConfig.from_config(ml_collections.ConfigDict({})) == lm_step.LossConfig()
    with pytest.raises(ValueError, match="max_loss_fraction"):
        lm_step.LossConfig(max_loss_fraction=1.5)
    with pytest.raises(ValueError, match="micro_batches"):
        lm_step.LossConfig(micro_batches=0)
