"""torchxrayvision's chest X-ray DenseNet in Flax NNX: the classifier behind LLM-CXR's losses.

LLM-CXR trains its VQ-GAN with a clinical-information-preserving loss (matching this network's
features of an image and of its reconstruction), computes FID on its 1024-d pooled features
("txv-all-1024") and classifies generated images with its 18 outputs. The network is
torchvision's DenseNet as `xrv.models.DenseNet(weights="densenet121-res224-all")` builds it:

- stem: conv0 7x7/2 (pad 3, no bias), norm0, ReLU, max-pool 3/2 (pad 1);
- dense blocks of dense layers (norm1, ReLU, conv1 1x1 to bn_size * growth_rate, norm2, ReLU,
  conv2 3x3 to growth_rate), each layer's output concatenated to its input on channels;
- between blocks, transitions (norm, ReLU, conv 1x1 halving the channels, avg-pool 2/2);
- norm5, then ReLU, global average pooling (xrv's `features2`) and a linear classifier.

Module names mirror torchvision's state-dict keys (convert/torchxrayvision.py holds the table).
Layout is NHWC. BatchNorm is our own small module rather than `nnx.BatchNorm`, because PyTorch
updates the running variance with the *unbiased* batch variance (flax uses the biased one):
with `train=True` it normalises with batch statistics and updates the running ones like
PyTorch (momentum 0.1); otherwise it uses the running statistics (what every loss and
evaluation wants; `train=True` is for training a fallback classifier when the released weights
are unavailable).

Outputs are raw logits. xrv's `forward` of a released model returns sigmoid probabilities
rescaled by per-label operating points (`op_norm` here, with `XRV_ALL_OP_THRESHS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llmcxr_jax.errors import InputError
from llmcxr_jax.models import common

Array = jax.Array

# The 18 outputs of torchxrayvision's DenseNets, in order: `xrv.datasets.default_pathologies`,
# which is also `model_urls["all"]["labels"]` (the "all" model predicts every one of them).
XRV_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)

# Operating points of "densenet121-res224-all" (`model_urls["all"]["op_threshs"]`): the
# probability that xrv's calibrated output maps to 0.5, per label of XRV_LABELS.
XRV_ALL_OP_THRESHS: tuple[float, ...] = (
    0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358,
    0.010060724, 0.103246614, 0.056810737, 0.026791653, 0.050318155, 0.023985857,
    0.01939503, 0.042889766, 0.053369623, 0.035975814, 0.20204692, 0.05015312,
)  # fmt: skip

# xrv's pixel scale: images are mapped linearly onto [-XRV_RANGE, XRV_RANGE].
XRV_RANGE = 1024.0


@dataclasses.dataclass(frozen=True)
class DenseNetConfig:
    """torchvision's DenseNet hyper-parameters, plus the input size and a compute dtype."""

    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    in_channels: int = 1
    num_classes: int = 18
    image_size: int = 224  # the resolution the weights were trained at (xrv resizes to it)
    dtype: str = "float32"  # compute dtype; parameters and BatchNorm statistics stay fp32

    def __post_init__(self):
        if not self.block_config:
            raise InputError("block_config needs at least one dense block")

    @property
    def block_in_features(self) -> tuple[int, ...]:
        """Channels entering each dense block."""
        out, c = [], self.num_init_features
        for i, n in enumerate(self.block_config):
            out.append(c)
            c += n * self.growth_rate
            if i < len(self.block_config) - 1:
                c //= 2
        return tuple(out)

    @property
    def num_features(self) -> int:
        """Channels of the final feature map (1024 for DenseNet-121)."""
        return self.block_in_features[-1] + self.block_config[-1] * self.growth_rate

    def replace(self, **changes: Any) -> DenseNetConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DenseNetConfig:
        d = dict(d)
        if "block_config" in d:
            d["block_config"] = tuple(d["block_config"])
        return cls(**d)


PRESETS: dict[str, DenseNetConfig] = {
    # xrv.models.DenseNet(weights="densenet121-res224-all"): DenseNet-121, 1 channel, 18 labels.
    "densenet121-xrv": DenseNetConfig(),
    # For tests and the demo: 64 x 64 images, two short blocks.
    "tiny": DenseNetConfig(
        growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=4, image_size=64
    ),
}


def get_preset(name: str, **overrides: Any) -> DenseNetConfig:
    if name not in PRESETS:
        raise InputError(f"unknown DenseNet preset {name!r}; known: {sorted(PRESETS)}")
    common.check_fields(DenseNetConfig, overrides, "DenseNet")
    return PRESETS[name].replace(**overrides)


# --------------------------------------------------------------------------------------------
# Building blocks (names follow torchvision's modules)
# --------------------------------------------------------------------------------------------

# torchvision initialises convolutions with kaiming_normal_ (fan_in, ReLU gain) and the
# classifier like nn.Linear (uniform in +-1/sqrt(fan_in)) with a zero bias.
_CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_LINEAR_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, dtype, *, stride: int = 1) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=stride,
        padding=((k // 2, k // 2),) * 2,
        use_bias=False,
        dtype=dtype,
        kernel_init=_CONV_INIT,
        rngs=rngs,
    )


class BatchNorm(nnx.Module):
    """PyTorch's BatchNorm2d over the last (channel) axis: eps 1e-5, momentum 0.1.

    `use_running_average=False` normalises with the batch's (biased) statistics and moves the
    running ones towards the batch's, the variance unbiased (n / (n - 1)), as PyTorch does.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.eps = eps
        self.momentum = momentum

    def __call__(self, x: Array, *, use_running_average: bool = True) -> Array:
        xf = x.astype(jnp.float32)
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            n = xf.size // xf.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        inv = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        return ((xf - mean) * inv + self.bias[...]).astype(x.dtype)


class DenseLayer(nnx.Module):
    """BN-ReLU-conv 1x1 (bottleneck), BN-ReLU-conv 3x3; returns only the new channels."""

    def __init__(self, cin: int, growth_rate: int, bn_size: int, rngs: nnx.Rngs, dtype):
        mid = bn_size * growth_rate
        self.norm1 = BatchNorm(cin)
        self.conv1 = _conv(cin, mid, 1, rngs, dtype)
        self.norm2 = BatchNorm(mid)
        self.conv2 = _conv(mid, growth_rate, 3, rngs, dtype)

    def __call__(self, x: Array, *, train: bool) -> Array:
        h = self.conv1(jax.nn.relu(self.norm1(x, use_running_average=not train)))
        return self.conv2(jax.nn.relu(self.norm2(h, use_running_average=not train)))


class DenseBlock(nnx.Module):
    def __init__(self, cin: int, num_layers: int, cfg: DenseNetConfig, rngs: nnx.Rngs, dtype):
        g = cfg.growth_rate
        self.layers = nnx.List(
            [DenseLayer(cin + i * g, g, cfg.bn_size, rngs, dtype) for i in range(num_layers)]
        )

    def __call__(self, x: Array, *, train: bool) -> Array:
        for layer in self.layers:
            x = jnp.concatenate([x, layer(x, train=train)], axis=-1)
        return x


class Transition(nnx.Module):
    """BN-ReLU-conv 1x1 to `cout` channels, then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs, dtype):
        self.norm = BatchNorm(cin)
        self.conv = _conv(cin, cout, 1, rngs, dtype)

    def __call__(self, x: Array, *, train: bool) -> Array:
        x = self.conv(jax.nn.relu(self.norm(x, use_running_average=not train)))
        return nnx.avg_pool(x, (2, 2), strides=(2, 2))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class DenseNet(nnx.Module):
    """torchxrayvision's DenseNet on NHWC images already scaled like xrv's (see xrv_preprocess).

    Inputs are used at the size given (xrv itself resizes to `image_size` first: call
    `xrv_preprocess`). `train=True` uses and updates batch statistics.
    """

    def __init__(self, config: DenseNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        c = config
        self.conv0 = _conv(c.in_channels, c.num_init_features, 7, rngs, dtype, stride=2)
        self.norm0 = BatchNorm(c.num_init_features)
        blocks, transitions = [], []
        for i, (cin, n) in enumerate(zip(c.block_in_features, c.block_config, strict=True)):
            blocks.append(DenseBlock(cin, n, c, rngs, dtype))
            if i < len(c.block_config) - 1:
                cout = cin + n * c.growth_rate
                transitions.append(Transition(cout, cout // 2, rngs, dtype))
        self.denseblocks = nnx.List(blocks)  # denseblocks[i] is xrv's features.denseblock{i+1}
        self.transitions = nnx.List(transitions)
        self.norm5 = BatchNorm(c.num_features)
        self.classifier = nnx.Linear(
            c.num_features, c.num_classes, kernel_init=_LINEAR_INIT, dtype=dtype, rngs=rngs
        )

    def features(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        """Intermediate features, for feature matching and FID.

        `block{k}`: output of dense block k ([B, h, w, C_k], before its transition);
        `norm5`: the final feature map (xrv's `model.features(x)`, before the ReLU);
        `pooled`: ReLU then global average pooling, [B, num_features] (xrv's `features2`).
        """
        if x.ndim != 4 or x.shape[-1] != self.config.in_channels:
            raise ValueError(
                f"expected NHWC images with {self.config.in_channels} channel(s), got {x.shape}"
            )
        ura = not train
        h = self.conv0(x.astype(self.config.dtype))
        h = jax.nn.relu(self.norm0(h, use_running_average=ura))
        h = nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        out: dict[str, Array] = {}
        for i, block in enumerate(self.denseblocks):
            h = block(h, train=train)
            out[f"block{i + 1}"] = h
            if i < len(self.transitions):
                h = self.transitions[i](h, train=train)
        h = self.norm5(h, use_running_average=ura)
        out["norm5"] = h
        out["pooled"] = jnp.mean(jax.nn.relu(h).astype(jnp.float32), axis=(1, 2))
        return out

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        """Logits [B, num_classes] (fp32)."""
        pooled = self.features(x, train=train)["pooled"]
        return self.classifier(pooled.astype(self.config.dtype)).astype(jnp.float32)


def abstract_model(config: DenseNetConfig) -> DenseNet:
    """The model with ShapeDtypeStructs for variables: nothing is allocated."""
    return common.abstract(DenseNet, config)


def variables_of(model: DenseNet) -> dict[str, Any]:
    """Parameters and BatchNorm statistics as a nested dict of arrays (what we checkpoint)."""
    return nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))


def model_from_variables(config: DenseNetConfig, tree: dict[str, Any]) -> DenseNet:
    """A model of `config` holding `tree` (shaped like `variables_of`'s result)."""
    return common.with_variables(DenseNet, config, tree)


# --------------------------------------------------------------------------------------------
# Inputs and outputs as torchxrayvision has them
# --------------------------------------------------------------------------------------------


def xrv_preprocess(images: Array, image_size: int = 224, *, antialias: bool = True) -> Array:
    """Our images (NHWC, RGB or grey, in [-1, 1]) as xrv's DenseNet takes them: [B, S, S, 1].

    xrv maps 8-bit pixels p linearly to (2 p / 255 - 1) * 1024 (`utils.normalize`), so [-1, 1]
    is multiplied by 1024. Colour becomes grey by averaging the channels (xrv keeps channel 0;
    for the grey-replicated RGB of a CXR both are the same, and the mean is kinder to a
    reconstruction's small colour errors). A non-square image is center-cropped on its long side
    (xrv's `XRayCenterCrop`), then resized to `image_size` with antialiased bilinear
    interpolation, as xrv's models do to off-size inputs (`utils.fix_resolution`:
    `F.interpolate(mode="bilinear", antialias=True)`; `antialias=False` reproduces the plain
    bilinear `nn.Upsample` of xrv releases before 2025). Values are not clipped, so gradients
    reach reconstructions that overshoot [-1, 1]. Differentiable.
    """
    if images.ndim != 4:
        raise ValueError(f"expected NHWC images, got shape {images.shape}")
    x = images.astype(jnp.float32)
    x = jnp.mean(x, axis=-1, keepdims=True) if x.shape[-1] != 1 else x
    b, h, w, _ = x.shape
    if h != w:
        s = min(h, w)
        top, left = h // 2 - s // 2, w // 2 - s // 2
        x = x[:, top : top + s, left : left + s]
    if x.shape[1] != image_size:
        x = jax.image.resize(x, (b, image_size, image_size, 1), "linear", antialias=antialias)
    return x * XRV_RANGE


def op_norm(probs: Array, op_threshs: Array | tuple[float, ...] = XRV_ALL_OP_THRESHS) -> Array:
    """xrv's calibration of sigmoid outputs: each label's operating point maps to 0.5.

    Below the threshold t, p -> p / (2 t); above, p -> 1 - (1 - p) / (2 (1 - t)); labels with a
    NaN threshold give 0.5. What a released xrv model's `forward` returns is
    `op_norm(sigmoid(logits))`.
    """
    t = jnp.asarray(op_threshs, jnp.float32)
    known = ~jnp.isnan(t)
    t = jnp.where(known, t, 0.5)  # a finite stand-in, so gradients stay finite
    low = probs / (2 * t)
    high = 1.0 - (1.0 - probs) / (2 * (1.0 - t))
    return jnp.where(known, jnp.where(probs < t, low, high), 0.5)
