"""Our DenseNet against a PyTorch DenseNet named exactly like torchvision's (and so like
torchxrayvision's): same outputs, the same state-dict keys and shapes, both conversion
directions, PyTorch's train-mode BatchNorm, and gradients through the features.

torchvision cannot be installed here, so the reference is rebuilt from plain `torch.nn`
modules with torchvision's module names; its `state_dict()` then has xrv's key names.
"""

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmcxr_jax.convert.mapping import ConversionError, torch_shape, tree_shapes
from llmcxr_jax.convert.torchxrayvision import IGNORED_KEYS, export_xrv, import_xrv, rules, save_xrv
from llmcxr_jax.models.densenet import (
    PRESETS,
    XRV_ALL_OP_THRESHS,
    XRV_LABELS,
    DenseNet,
    abstract_model,
    op_norm,
    variables_of,
    xrv_preprocess,
)

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

TINY = PRESETS["tiny"]
FULL = PRESETS["densenet121-xrv"]


# --------------------------------------------------------------------------------------------
# The PyTorch reference (torchvision's structure and names)
# --------------------------------------------------------------------------------------------


class RefDenseLayer(nn.Module):
    def __init__(self, cin, growth_rate, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], 1)


class RefTransition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            OrderedDict(
                norm=nn.BatchNorm2d(cin),
                relu=nn.ReLU(),
                conv=nn.Conv2d(cin, cout, 1, bias=False),
                pool=nn.AvgPool2d(2, 2),
            )
        )


class RefDenseNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = cfg.num_init_features
        self.features = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(cfg.in_channels, c, 7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(c),
                relu0=nn.ReLU(),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        for i, n in enumerate(cfg.block_config):
            block = nn.Sequential(
                OrderedDict(
                    (
                        f"denselayer{j + 1}",
                        RefDenseLayer(c + j * cfg.growth_rate, cfg.growth_rate, cfg.bn_size),
                    )
                    for j in range(n)
                )
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            c += n * cfg.growth_rate
            if i < len(cfg.block_config) - 1:
                self.features.add_module(f"transition{i + 1}", RefTransition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, cfg.num_classes)

    def features2(self, x):
        return F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1)

    def forward(self, x):
        return self.classifier(self.features2(x))


def ref_model(cfg, seed=0):
    """A reference in eval mode whose every BatchNorm has non-trivial affine and running stats."""
    torch.manual_seed(seed)
    model = RefDenseNet(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1.0 + 0.2 * torch.randn(n))
                m.bias.copy_(0.1 * torch.randn(n))
                m.running_mean.copy_(0.2 * torch.randn(n))
                m.running_var.copy_(0.5 + torch.rand(n))
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(0.1 * torch.randn_like(m.bias))
    return model.eval()


def as_torch(x_nhwc):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)))


def images(cfg, batch, seed=0):
    rng = np.random.default_rng(seed)
    s = cfg.image_size
    return (rng.standard_normal((batch, s, s, cfg.in_channels)) * 500).astype(np.float32)


def assert_close(ours, ref, tol=1e-4):
    np.testing.assert_allclose(np.asarray(ours), ref.detach().numpy(), rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# (a), (b): outputs equal the reference's, in both conversion directions
# --------------------------------------------------------------------------------------------


def test_tiny_matches_reference_features_and_logits():
    ref = ref_model(TINY)
    model = import_xrv(ref.state_dict(), TINY)
    x = images(TINY, 3)
    feats = model.features(jnp.asarray(x))
    with torch.no_grad():
        xt = as_torch(x)
        assert_close(model(jnp.asarray(x)), ref(xt))
        assert_close(feats["pooled"], ref.features2(xt))
        h = xt
        for name, mod in ref.features.named_children():
            h = mod(h)
            if name.startswith("denseblock"):
                assert_close(feats[f"block{name[-1]}"], h.permute(0, 2, 3, 1))
        assert_close(feats["norm5"], h.permute(0, 2, 3, 1))


def test_densenet121_matches_reference_and_roundtrips():
    ref = ref_model(FULL, seed=1)
    model = import_xrv(ref.state_dict(), FULL)
    x = images(FULL, 1, seed=1)
    with torch.no_grad():
        xt = as_torch(x)
        ref_logits, ref_pooled = ref(xt), ref.features2(xt)
    # Compiled: op-by-op, each of DenseNet-121's many shapes would compile on its own (slower).
    logits, pooled = nnx.jit(lambda m, x: (m(x), m.features(x)["pooled"]))(model, jnp.asarray(x))
    assert logits.shape == (1, 18) and pooled.shape == ref_pooled.shape == (1, 1024)
    assert_close(logits, ref_logits)
    assert_close(pooled, ref_pooled)

    # (b) export, strict load into a fresh reference: the same outputs.
    fresh = RefDenseNet(FULL).eval()
    state = {k: torch.from_numpy(v) for k, v in export_xrv(model).items()}
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(fresh(xt).numpy(), ref_logits.numpy(), rtol=0, atol=1e-5)


def test_export_import_roundtrip_is_exact_and_strict_loadable():
    model = DenseNet(TINY, rngs=nnx.Rngs(3))
    state = export_xrv(model)
    ref = RefDenseNet(TINY)
    missing, unexpected = ref.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=True
    )
    assert not missing and not unexpected
    assert state["features.norm0.num_batches_tracked"].dtype == np.int64
    back = import_xrv(ref.state_dict(), TINY)
    jax.tree.map(np.testing.assert_array_equal, variables_of(back), variables_of(model))
    x = images(TINY, 2, seed=4)
    with torch.no_grad():
        assert_close(model(jnp.asarray(x)), ref.eval()(as_torch(x)))


def test_import_from_file_and_op_threshs(tmp_path):
    """A state dict saved from an xrv model built with weights= carries `op_threshs`."""
    ref = ref_model(TINY)
    ref.register_buffer("op_threshs", torch.tensor([0.1, 0.2, float("nan"), 0.4]))
    path = tmp_path / "xrv.pt"
    torch.save(ref.state_dict(), path)
    model = import_xrv(path, TINY)
    state = export_xrv(model, op_threshs=[0.1, 0.2, float("nan"), 0.4])
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    save_xrv(model, tmp_path / "ours.pt")
    ref.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True), strict=False)
    assert "op_threshs" not in torch.load(tmp_path / "ours.pt", weights_only=True)
    with pytest.raises(ConversionError, match="op_threshs"):
        export_xrv(model, op_threshs=XRV_ALL_OP_THRESHS)  # 18 thresholds, 4 classes


# --------------------------------------------------------------------------------------------
# (c), (d): strictness and the key set
# --------------------------------------------------------------------------------------------


def test_import_errors_name_the_key():
    state = ref_model(TINY).state_dict()
    key = "features.denseblock2.denselayer1.conv1.weight"

    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(ConversionError, match=f"missing tensor {key}"):
        import_xrv(missing, TINY)

    wrong = dict(state, **{key: state[key][:, :-1]})
    with pytest.raises(ConversionError, match=rf"{key} has shape \(32, 15, 1, 1\), expected"):
        import_xrv(wrong, TINY)

    extra = dict(state, **{"features.denseblock2.denselayer3.conv1.weight": state[key]})
    with pytest.raises(ConversionError, match="unexpected tensors.*denselayer3.conv1.weight"):
        import_xrv(extra, TINY)


def test_densenet121_key_set_equals_reference():
    ref = {
        k: tuple(v.shape)
        for k, v in RefDenseNet(FULL).state_dict().items()
        if not IGNORED_KEYS.search(k)
    }
    shapes = tree_shapes(variables_of(abstract_model(FULL)))
    table = rules(FULL)
    ours = {r.key: torch_shape(r, shapes[r.path], FULL) for r in table}
    # DenseNet-121: 121 BatchNorms (4 tensors each), 120 convolutions, the classifier's 2.
    assert len(table) == len(ours) == len(ref) == 121 * 4 + 120 + 2
    assert ours == ref
    assert {r.path for r in table} == set(shapes)
    assert list(ours) == list(ref)  # the table follows the state dict's order


# --------------------------------------------------------------------------------------------
# (e), (f): train-mode BatchNorm and gradients
# --------------------------------------------------------------------------------------------


def test_train_mode_batchnorm_updates_running_stats_like_pytorch():
    ref = ref_model(TINY, seed=5)
    model = import_xrv(ref.state_dict(), TINY)
    x = images(TINY, 4, seed=5)
    ref.train()
    logits = model(jnp.asarray(x), train=True)
    with torch.no_grad():
        ref_logits = ref(as_torch(x))
    assert_close(logits, ref_logits)
    ours = export_xrv(model)
    for k, v in ref.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(ours[k], v.numpy(), rtol=1e-5, atol=1e-5, err_msg=k)
    # Inference afterwards uses the updated running statistics.
    ref.eval()
    with torch.no_grad():
        assert_close(model(jnp.asarray(x)), ref(as_torch(x)))


def test_feature_matching_loss_is_differentiable():
    model = DenseNet(TINY, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    real = jnp.asarray(rng.uniform(-1, 1, (2, 72, 72, 3)).astype(np.float32))
    fake = real + 0.1 * jnp.asarray(rng.standard_normal(real.shape).astype(np.float32))

    def loss(fake):
        fr = model.features(xrv_preprocess(real, TINY.image_size))
        ff = model.features(xrv_preprocess(fake, TINY.image_size))
        return sum(jnp.mean((ff[k] - jax.lax.stop_gradient(fr[k])) ** 2) for k in fr)

    g = jax.jit(jax.grad(loss))(fake)
    assert g.shape == fake.shape
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


# --------------------------------------------------------------------------------------------
# Inputs and outputs as xrv has them
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("src,antialias", [(256, True), (256, False), (200, True)])
def test_preprocess_matches_xrv_resize(src, antialias):
    """xrv: pixels scaled to [-1024, 1024], then F.interpolate(bilinear, antialias) to 224."""
    rng = np.random.default_rng(src)
    grey = rng.uniform(-1, 1, (2, src, src, 1)).astype(np.float32)
    rgb = np.repeat(grey, 3, axis=-1)
    ours = xrv_preprocess(jnp.asarray(rgb), 224, antialias=antialias)
    ref = F.interpolate(
        as_torch(grey * 1024), size=(224, 224), mode="bilinear", antialias=antialias
    ).permute(0, 2, 3, 1)
    assert ours.shape == (2, 224, 224, 1)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-5, atol=1e-3)


def test_preprocess_scale_and_crop():
    x = jnp.linspace(-1, 1, 2 * 64 * 80 * 3).reshape(2, 64, 80, 3)
    out = xrv_preprocess(x, 64)
    np.testing.assert_allclose(out[..., 0], x[:, :, 8:72].mean(-1) * 1024, rtol=1e-6)


def test_labels_and_op_norm():
    assert len(XRV_LABELS) == len(XRV_ALL_OP_THRESHS) == FULL.num_classes == 18
    assert XRV_LABELS[0] == "Atelectasis" and XRV_LABELS[-1] == "Enlarged Cardiomediastinum"
    t = jnp.asarray([0.2, 0.2, 0.2, float("nan")])
    p = jnp.asarray([0.2, 0.1, 0.6, 0.9])
    np.testing.assert_allclose(op_norm(p, t), [0.5, 0.25, 0.75, 0.5], rtol=1e-6)
    g = jax.grad(lambda p: op_norm(p, t).sum())(p)
    assert bool(jnp.all(jnp.isfinite(g)))
