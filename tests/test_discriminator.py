"""The NNX PatchGAN discriminator against taming-transformers' `NLayerDiscriminator`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from taming.modules.discriminator.model import NLayerDiscriminator as TamingDisc
from taming.modules.discriminator.model import weights_init

from llmcxr_jax.convert import lpips as conv
from llmcxr_jax.convert.mapping import ConversionError, nested_get
from llmcxr_jax.models import common
from llmcxr_jax.models.discriminator import (
    DiscriminatorConfig,
    NLayerDiscriminator,
    adopt_weight,
    hinge_d_loss,
    vanilla_d_loss,
)

SMALL = DiscriminatorConfig(input_nc=3, ndf=8, n_layers=2)


def _taming(cfg, seed=0):
    """taming's discriminator with weights_init, then BatchNorm statistics and biases that
    matter: running statistics from a batch (momentum 1), perturbed, and non-zero biases."""
    torch.manual_seed(seed)
    ref = TamingDisc(cfg.input_nc, cfg.ndf, cfg.n_layers, cfg.use_actnorm).apply(weights_init)
    bns = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if bns:
        for m in bns:
            m.momentum = 1.0
        with torch.no_grad():
            ref.train()(torch.rand(2, cfg.input_nc, 32, 32) * 2 - 1)
            for m in bns:
                m.momentum = 0.1
                m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
                m.running_var.mul_(1 + 0.2 * torch.rand_like(m.running_var))
                m.bias.copy_(0.05 * torch.randn_like(m.bias))
                m.num_batches_tracked.fill_(7)
    return ref.eval()


def _ours(ref, cfg):
    tree = conv.import_discriminator(ref.state_dict(), cfg, prefix="")
    return common.with_variables(NLayerDiscriminator, cfg, tree)


def _images(n, size, c=3, seed=0):
    x = np.random.default_rng(seed).uniform(-1, 1, (n, size, size, c))
    return x.astype(np.float32)


def _torch(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    "cfg,size", [(DiscriminatorConfig(), 64), (DiscriminatorConfig(), 256), (SMALL, 32)]
)
def test_eval_matches_taming(cfg, size):
    ref = _taming(cfg)
    model = _ours(ref, cfg)
    model.eval()
    x = _images(2, size)
    with torch.no_grad():
        want = _nhwc(ref(_torch(x)))
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x)))
    assert got.shape == want.shape and want.shape[-1] == 1
    assert want.std() > 1e-2  # the comparison sees more than the last bias
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_layer_structure_matches_taming():
    cfg = DiscriminatorConfig()
    ref = _taming(cfg)
    ours = conv.export_discriminator(
        common.variables_of(_ours(ref, cfg)), cfg, prefix="loss.discriminator."
    )
    want = {f"loss.discriminator.{k}": tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == want
    assert "loss.discriminator.main.2.bias" not in ours  # no bias before BatchNorm


def test_train_step_matches_taming():
    """Train mode: batch statistics, running-statistic updates (unbiased variance, momentum
    0.1) over a real and a fake pass, and the gradients of the hinge loss."""
    cfg = SMALL
    ref = _taming(cfg, seed=1).train()
    model = _ours(ref, cfg)
    model.train()
    real, fake = _images(2, 32, seed=1), _images(2, 32, seed=2)

    d_real, d_fake = ref(_torch(real)), ref(_torch(fake))
    loss_ref = 0.5 * (F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean())
    loss_ref.backward()

    @nnx.jit
    def step(model, real, fake):
        def loss_fn(model):
            return hinge_d_loss(model(real), model(fake))

        return nnx.value_and_grad(loss_fn)(model)

    loss, grads = step(model, jnp.asarray(real), jnp.asarray(fake))
    np.testing.assert_allclose(loss, loss_ref.item(), rtol=1e-5, atol=1e-6)

    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    want = ref.state_dict()
    for n, s in stats["main"].items():
        np.testing.assert_allclose(s["mean"], want[f"main.{n}.running_mean"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(s["var"], want[f"main.{n}.running_var"], atol=1e-5, rtol=0)

    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    grads = nnx.to_pure_dict(grads)
    rules = [r for r in conv.discriminator_rules(cfg, prefix="") if r.key in ref_grads]
    assert len(rules) == len(ref_grads)
    for r in rules:
        g = r.transform.to_torch(np.asarray(nested_get(grads, r.path)), cfg)
        np.testing.assert_allclose(g, ref_grads[r.key], atol=1e-5, rtol=1e-4, err_msg=r.key)


def test_export_loads_strictly_into_taming(tmp_path):
    cfg = SMALL
    model = _ours(_taming(cfg, seed=2), cfg)
    model.eval()
    state = conv.export_discriminator(common.variables_of(model), cfg, prefix="")
    assert state["main.3.num_batches_tracked"].dtype == np.int64
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "d.pt")
    fresh = TamingDisc(cfg.input_nc, cfg.ndf, cfg.n_layers)
    fresh.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True), strict=True)
    x = _images(2, 32, seed=3)
    with torch.no_grad():
        want = _nhwc(fresh.eval()(_torch(x)))
    np.testing.assert_allclose(model(jnp.asarray(x)), want, atol=1e-5, rtol=0)


def test_import_from_training_checkpoint_prefix(tmp_path):
    cfg = SMALL
    ref = _taming(cfg, seed=3)
    ckpt = {f"loss.discriminator.{k}": v for k, v in ref.state_dict().items()}
    ckpt["encoder.conv_in.weight"] = torch.zeros(4, 3, 3, 3)  # other parts of the VQ-GAN
    ckpt["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save({"state_dict": ckpt, "global_step": 3}, tmp_path / "last.ckpt")
    tree = conv.load_discriminator_checkpoint(tmp_path / "last.ckpt", cfg)
    want = conv.import_discriminator(ref.state_dict(), cfg, prefix="")
    jax.tree.map(np.testing.assert_array_equal, tree, want)


def test_import_errors_name_the_key():
    cfg = SMALL
    state = dict(_taming(cfg).state_dict())
    missing = {k: v for k, v in state.items() if k != "main.6.running_var"}
    with pytest.raises(ConversionError, match=r"main\.6\.running_var"):
        conv.import_discriminator(missing, cfg, prefix="")
    bad = {**state, "main.5.weight": torch.zeros(32, 16, 3, 3)}
    with pytest.raises(ConversionError, match=r"main\.5\.weight has shape \(32, 16, 3, 3\)"):
        conv.import_discriminator(bad, cfg, prefix="")
    extra = {**state, "main.2.bias": torch.zeros(16)}  # a bias taming does not have here
    with pytest.raises(ConversionError, match=r"unexpected tensors \['main\.2\.bias'\]"):
        conv.import_discriminator(extra, cfg, prefix="")


def test_actnorm_data_dependent_init_and_round_trip():
    cfg = DiscriminatorConfig(ndf=8, n_layers=2, use_actnorm=True)
    torch.manual_seed(4)
    ref = TamingDisc(cfg.input_nc, cfg.ndf, cfg.n_layers, use_actnorm=True).apply(weights_init)
    model = _ours(ref, cfg)  # uninitialised ActNorm in both
    x = _images(2, 32, seed=4)
    with torch.no_grad():
        want_train = _nhwc(ref.train()(_torch(x)))  # initialises loc/scale from this batch
    model.train()
    got_train = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x))
    np.testing.assert_allclose(got_train, want_train, atol=1e-4, rtol=0)
    exported = conv.export_discriminator(common.variables_of(model), cfg, prefix="")
    for k, v in ref.state_dict().items():
        assert exported[k].dtype == v.numpy().dtype, k
        np.testing.assert_allclose(exported[k], v.numpy(), atol=1e-4, rtol=1e-4, err_msg=k)
    # an initialised layer keeps its loc/scale in train mode, and eval matches
    y = _images(2, 32, seed=5)
    with torch.no_grad():
        want = _nhwc(ref.eval()(_torch(y)))
    model.eval()
    np.testing.assert_allclose(model(jnp.asarray(y)), want, atol=1e-4, rtol=0)
    model.train()
    np.testing.assert_allclose(model(jnp.asarray(y)), want, atol=1e-4, rtol=0)
    back = _ours(ref, cfg)
    assert int(back.main[3].initialized[...]) == 1


def test_losses_match_taming_formulas():
    # taming's vqperceptual.py imports LPIPS (hence torchvision) at the top: its two loss
    # functions are restated here in torch.
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2, 6, 6, 1)).astype(np.float32) * 2
    fake = rng.normal(size=(2, 6, 6, 1)).astype(np.float32) * 2
    r, f = torch.from_numpy(real), torch.from_numpy(fake)
    hinge = 0.5 * (torch.mean(F.relu(1.0 - r)) + torch.mean(F.relu(1.0 + f)))
    vanilla = 0.5 * (torch.mean(F.softplus(-r)) + torch.mean(F.softplus(f)))
    np.testing.assert_allclose(
        hinge_d_loss(jnp.asarray(real), jnp.asarray(fake)), hinge.item(), rtol=1e-6
    )
    np.testing.assert_allclose(
        vanilla_d_loss(jnp.asarray(real), jnp.asarray(fake)), vanilla.item(), rtol=1e-6
    )


def test_adopt_weight():
    assert adopt_weight(0.8, 9, threshold=10) == 0.0
    assert adopt_weight(0.8, 10, threshold=10) == 0.8
    assert adopt_weight(0.8, 0) == 0.8
    assert adopt_weight(0.8, 3, threshold=5, value=0.1) == 0.1
    jitted = jax.jit(lambda step: adopt_weight(0.8, step, threshold=10))
    assert float(jitted(9)) == 0.0
    np.testing.assert_allclose(float(jitted(10)), 0.8)
