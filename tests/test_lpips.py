"""The NNX LPIPS against a PyTorch restatement of taming-transformers' `lpips.py`.

taming's module imports torchvision (not installable here) at the top, so the reference below
rebuilds it with the same structure and names: a torchvision-style `features` Sequential (keys
`features.{n}`), taming's five slices holding those very layers under their original indices
(keys `net.slice{k}.{n}`), the ScalingLayer buffers and `lin{k}.model = [Dropout, Conv1x1]`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from flax import nnx

from llmcxr_jax.convert import lpips as conv
from llmcxr_jax.convert.mapping import ConversionError
from llmcxr_jax.models import common
from llmcxr_jax.models.lpips import LPIPS, get_preset, normalize_tensor

# taming's vgg16 slices over torchvision's `features` (hard-coded there, as here).
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


class TorchVisionVGG(nn.Module):
    """torchvision's vgg16 layout (`features` indices 0..30); a stand-in `classifier`."""

    def __init__(self, channels):
        super().__init__()
        layers, cin = [], 3
        for s, (c, n) in enumerate(zip(channels, (2, 2, 3, 3, 3), strict=True)):
            if s:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for _ in range(n):
                layers += [nn.Conv2d(cin, c, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = c
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(cin, 4))  # must be ignored on import


class ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.model = nn.Sequential(
            nn.Dropout(), nn.Conv2d(c, 1, 1, stride=1, padding=0, bias=False)
        )


class Slices(nn.Module):
    def __init__(self, features):
        super().__init__()
        for k, (lo, hi) in enumerate(SLICES, start=1):
            seq = nn.Sequential()
            for n in range(lo, hi):
                seq.add_module(str(n), features[n])
            setattr(self, f"slice{k}", seq)

    def forward(self, x):
        outs = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            outs.append(x)
        return outs


def torch_normalize_tensor(x, eps=1e-10):
    norm_factor = torch.sqrt(torch.sum(x**2, dim=1, keepdim=True))
    return x / (norm_factor + eps)


class RefLPIPS(nn.Module):
    def __init__(self, vgg, channels):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = Slices(vgg.features)
        for k, c in enumerate(channels):
            setattr(self, f"lin{k}", NetLinLayer(c))

    def forward(self, a, b):
        fa, fb = self.net(self.scaling_layer(a)), self.net(self.scaling_layer(b))
        val = 0
        for k in range(5):
            d = (torch_normalize_tensor(fa[k]) - torch_normalize_tensor(fb[k])) ** 2
            val = val + getattr(self, f"lin{k}").model(d).mean([2, 3], keepdim=True)
        return val


def _reference(cfg, seed=0):
    """(torchvision-style vgg, taming-style LPIPS sharing its layers, lin state dict)."""
    torch.manual_seed(seed)
    vgg = TorchVisionVGG(cfg.channels)
    ref = RefLPIPS(vgg, cfg.channels).eval()
    with torch.no_grad():
        for k in range(5):  # LPIPS heads are non-negative
            getattr(ref, f"lin{k}").model[1].weight.abs_()
    lin = {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}
    return vgg, ref, lin


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    y = np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
    return x, y


def _torch(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).requires_grad_(True)


def _model(tree, cfg):
    return common.with_variables(LPIPS, cfg, tree)


@nnx.jit
def _distance_and_grad(model, x, rec):
    """LPIPS(x, rec) [B] and d(sum)/d(rec); everything an argument, so XLA folds nothing."""

    def total(rec):
        d = model(x, rec)
        return d.sum(), d

    (_, d), g = jax.value_and_grad(total, has_aux=True)(rec)
    return d, g


@pytest.mark.parametrize("preset,size", [("tiny", 32), ("vgg16", 64)])
def test_matches_reference_with_gradients(preset, size):
    cfg = get_preset(preset)
    _, ref, _ = _reference(cfg)
    model = _model(conv.lpips_params(ref.state_dict(), cfg, prefix=""), cfg)
    x, y = _images(2, size)
    tx, ty = _torch(x), _torch(y)
    want = ref(tx, ty)
    assert want.shape == (2, 1, 1, 1)
    want.sum().backward()

    got, grad = _distance_and_grad(model, jnp.asarray(x), jnp.asarray(y))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want.detach().numpy().reshape(2), atol=1e-6, rtol=1e-4)
    grad = np.asarray(grad)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    want_grad = ty.grad.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(grad, want_grad, atol=1e-4 * np.abs(want_grad).max(), rtol=0)


def test_identical_images_give_zero_and_finite_gradient():
    cfg = get_preset("tiny")
    model = _model(conv.lpips_params(_reference(cfg)[1].state_dict(), cfg, prefix=""), cfg)
    x = jnp.asarray(_images(2, 32, seed=1)[0])
    assert np.all(np.asarray(model(x, x)) == 0.0)
    d, g = _distance_and_grad(model, x, jnp.array(np.asarray(x)))  # compiled: ulp-level
    assert np.all(np.abs(np.asarray(d)) < 1e-12)
    assert np.isfinite(np.asarray(g)).all()


def test_normalize_tensor_gradient_is_finite_at_zero():
    x = jnp.zeros((1, 2, 2, 4)).at[0, 0, 0].set(jnp.arange(1.0, 5.0))
    y = normalize_tensor(x)
    np.testing.assert_allclose(jnp.sum(y[0, 0, 0] ** 2), 1.0, rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(normalize_tensor(x) * jnp.arange(4.0)))(x)
    assert np.isfinite(np.asarray(g)).all()


def test_taming_and_torchvision_sources_give_the_same_model(tmp_path):
    cfg = get_preset("tiny")
    vgg, ref, lin = _reference(cfg, seed=1)
    from_taming = conv.lpips_params(ref.state_dict(), cfg, prefix="")
    from_tv = conv.lpips_params_torchvision(vgg.state_dict(), lin, cfg)
    jax.tree.map(np.testing.assert_array_equal, from_taming, from_tv)

    # the same, from files: a taming training checkpoint, and torchvision's + the lin file
    ckpt = {f"loss.perceptual_loss.{k}": v for k, v in ref.state_dict().items()}
    ckpt["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    ckpt["encoder.conv_in.weight"] = torch.zeros(128, 3, 3, 3)
    torch.save({"state_dict": ckpt, "global_step": 1}, tmp_path / "last.ckpt")
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    # the model-level entry points (files, as the trainer passes them, or state dicts)
    for model in (
        conv.import_lpips_from_taming(tmp_path / "last.ckpt", cfg),
        conv.import_lpips_from_taming(ckpt, cfg),
        conv.import_lpips(tmp_path / "vgg16.pth", tmp_path / "vgg.pth", cfg),
        conv.import_lpips(vgg.state_dict(), lin, cfg),
    ):
        assert isinstance(model, LPIPS)
        jax.tree.map(np.testing.assert_array_equal, common.variables_of(model), from_taming)
    torch.save({k: v for k, v in lin.items() if "lin4" not in k}, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=r"bad\.pth: missing tensor lin4\.model\.1\.weight"):
        conv.import_lpips(tmp_path / "vgg16.pth", tmp_path / "bad.pth", cfg)


def test_key_patterns():
    cfg = get_preset("vgg16")
    keys = {r.key for r in conv.lpips_rules(cfg)}
    assert "loss.perceptual_loss.net.slice1.0.weight" in keys
    assert "loss.perceptual_loss.net.slice5.28.bias" in keys
    assert "loss.perceptual_loss.lin4.model.1.weight" in keys
    assert len(keys) == 13 * 2 + 5
    tv = [r.key for r in conv.torchvision_vgg_rules(cfg)]
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert tv == [f"features.{n}.{w}" for n in convs for w in ("weight", "bias")]


def test_export_loads_strictly_into_reference():
    cfg = get_preset("tiny")
    _, ref, _ = _reference(cfg, seed=2)
    tree = conv.lpips_params(ref.state_dict(), cfg, prefix="")
    state = conv.export_lpips(tree, cfg, prefix="")
    assert set(state) == set(ref.state_dict())
    _, fresh, _ = _reference(cfg, seed=3)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x, y = _images(2, 32, seed=2)
    with torch.no_grad():
        want = fresh(_torch(x), _torch(y)).numpy().reshape(2)
    got = _model(tree, cfg)(jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    prefixed = conv.export_lpips(tree, cfg)
    assert set(prefixed) == {f"loss.perceptual_loss.{k}" for k in state}


def test_import_errors_name_the_key():
    cfg = get_preset("tiny")
    vgg, ref, lin = _reference(cfg)
    state = dict(ref.state_dict())

    missing = {k: v for k, v in state.items() if k != "net.slice3.12.weight"}
    with pytest.raises(ConversionError, match=r"missing tensor net\.slice3\.12\.weight"):
        conv.lpips_params(missing, cfg, prefix="")
    wrong = {**state, "lin2.model.1.weight": torch.zeros(1, 9, 1, 1)}
    with pytest.raises(ConversionError, match=r"lin2\.model\.1\.weight has shape \(1, 9, 1, 1\)"):
        conv.lpips_params(wrong, cfg, prefix="")
    extra = {**state, "net.slice1.1.weight": torch.zeros(4)}
    with pytest.raises(ConversionError, match=r"unexpected tensors \['net\.slice1\.1\.weight'\]"):
        conv.lpips_params(extra, cfg, prefix="")
    scaled = {**state, "scaling_layer.scale": torch.ones(1, 3, 1, 1)}
    with pytest.raises(ConversionError, match=r"scaling_layer\.scale"):
        conv.lpips_params(scaled, cfg, prefix="")
    with pytest.raises(ConversionError, match=r"missing tensor loss\.perceptual_loss\.net"):
        conv.lpips_params(state, cfg)  # a bare state dict needs prefix=""
    with pytest.raises(ConversionError, match=r"net\.slice1\.0\.weight has shape \(4, 3, 3, 3\)"):
        conv.lpips_params(state, get_preset("vgg16"), prefix="")  # the wrong preset

    tv = dict(vgg.state_dict())
    with pytest.raises(ConversionError, match=r"missing tensor features\.28\.bias"):
        conv.lpips_params_torchvision(
            {k: v for k, v in tv.items() if k != "features.28.bias"}, lin, cfg
        )
    with pytest.raises(ConversionError, match=r"unexpected tensors \['features\.30\.weight'\]"):
        conv.lpips_params_torchvision({**tv, "features.30.weight": torch.zeros(1)}, lin, cfg)
    with pytest.raises(ConversionError, match=r"missing tensor lin4\.model\.1\.weight"):
        conv.lpips_params_torchvision(tv, {k: v for k, v in lin.items() if "lin4" not in k}, cfg)


def test_dropout_only_in_train_mode():
    cfg = get_preset("tiny")
    model = _model(conv.lpips_params(_reference(cfg)[1].state_dict(), cfg, prefix=""), cfg)
    x, y = (jnp.asarray(a) for a in _images(2, 32, seed=3))
    base = np.asarray(model(x, y))
    model.train()  # as Lightning's model.train() does to taming's LPIPS
    dropped = np.asarray(model(x, y, rngs=nnx.Rngs(dropout=0)))
    assert np.isfinite(dropped).all() and not np.allclose(dropped, base)
    with pytest.raises(ValueError, match="rngs"):
        model(x, y)
    model.eval()
    np.testing.assert_array_equal(model(x, y), base)
