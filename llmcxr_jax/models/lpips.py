"""LPIPS perceptual distance (VGG16 trunk) as taming-transformers computes it, in Flax NNX.

VQ-GAN training adds LPIPS(x, x_rec) to the reconstruction loss; the pretrained weights
(torchvision's VGG16 plus the LPIPS linear heads) only mean something if the computation is
taming's, step for step:

1. `scale_inputs`: (x - shift) / scale with taming's ScalingLayer constants (inputs in [-1, 1]).
2. The VGG16 `features` trunk cut into 5 slices ending after relu1_2, relu2_2, relu3_3, relu4_3
   and relu5_3 (each slice after the first starts with the 2x2 max-pool).
3. Per slice: unit-normalise each position over channels (x / (||x|| + 1e-10)), square the
   difference, dropout (identity unless in train mode) and a bias-free 1x1 conv to one channel
   (`NetLinLayer`), then average over space.
4. Sum over the slices.

Differences from taming, each deliberate:
- The result is [B], not [B, 1, 1, 1]: broadcast it back yourself (`[:, None, None, None]`).
- `normalize_tensor` guards its `sqrt` so that its gradient stays finite where a position's
  features are all zero even when called on its own (values unchanged; behind LPIPS's ReLUs
  the gradients equal taming's either way).
- taming builds LPIPS with dropout and calls `.eval()`, but Lightning's `model.train()` turns
  that dropout back on during training. Here the dropout starts off (`deterministic=True`);
  `model.train()` turns it on and `__call__` then needs `rngs`.

Layout is NHWC. `PRESETS["vgg16"]` has VGG16's channels; `"tiny"` the same structure, small.
The converter (convert/lpips.py) maps taming's and torchvision's keys through `torch_indices`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

# taming's ScalingLayer (from the LPIPS repository): ImageNet statistics in [-1, 1] units.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


@dataclasses.dataclass(frozen=True)
class LPIPSConfig:
    """Channels and 3x3 convs of each of the 5 VGG slices; VGG16's by default."""

    channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    convs_per_slice: tuple[int, ...] = (2, 2, 3, 3, 3)
    dropout: float = 0.5  # taming's NetLinLayer(use_dropout=True): nn.Dropout() is p=0.5
    eps: float = 1e-10  # normalize_tensor's
    dtype: str = "float32"  # compute dtype of the VGG convs; normalisation runs in fp32

    def __post_init__(self):
        if len(self.channels) != len(self.convs_per_slice):
            raise ValueError(
                f"channels {self.channels} and convs_per_slice {self.convs_per_slice} differ in "
                "length"
            )

    @property
    def torch_indices(self) -> tuple[tuple[int, ...], ...]:
        """torchvision `features` index of every conv, per slice (taming keeps them too).

        VGG16: ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)); each conv is followed
        by its ReLU and each slice after the first starts with a max-pool.
        """
        out, n = [], 0
        for s, convs in enumerate(self.convs_per_slice):
            n += s > 0  # the pool
            out.append(tuple(range(n, n + 2 * convs, 2)))
            n += 2 * convs
        return tuple(out)

    def replace(self, **changes: Any) -> LPIPSConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LPIPSConfig:
        d = dict(d)
        for k in ("channels", "convs_per_slice"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


PRESETS: dict[str, LPIPSConfig] = {
    "vgg16": LPIPSConfig(),
    "tiny": LPIPSConfig(channels=(4, 8, 8, 16, 16)),  # for tests
}


def get_preset(name: str, **overrides: Any) -> LPIPSConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown LPIPS preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


# --------------------------------------------------------------------------------------------
# Pieces (pure functions where there is nothing to learn)
# --------------------------------------------------------------------------------------------


def scale_inputs(x: Array) -> Array:
    """taming's ScalingLayer on NHWC images in [-1, 1]."""
    return (x - jnp.asarray(SHIFT, x.dtype)) / jnp.asarray(SCALE, x.dtype)


def normalize_tensor(x: Array, eps: float = 1e-10) -> Array:
    """x / (||x||_2 over channels + eps), with a finite gradient where ||x|| = 0."""
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    pos = sq > 0
    norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
    return x / (norm + eps)


class VGGSlice(nnx.Module):
    """[2x2 max-pool], then 3x3 conv + ReLU `n_convs` times."""

    def __init__(self, cin: int, cout: int, n_convs: int, pool: bool, rngs: nnx.Rngs, dtype):
        self.pool = pool
        convs = []
        for _ in range(n_convs):
            convs.append(nnx.Conv(cin, cout, (3, 3), padding=1, dtype=dtype, rngs=rngs))
            cin = cout
        self.convs = nnx.List(convs)

    def __call__(self, x: Array) -> Array:
        if self.pool:  # torch MaxPool2d(2, 2): floor, no padding
            x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return x


class VGGFeatures(nnx.Module):
    """The VGG16 trunk up to relu5_3, returning the 5 slice outputs."""

    def __init__(self, config: LPIPSConfig, rngs: nnx.Rngs, dtype):
        slices, cin = [], 3
        for s, (cout, n) in enumerate(zip(config.channels, config.convs_per_slice, strict=True)):
            slices.append(VGGSlice(cin, cout, n, s > 0, rngs, dtype))
            cin = cout
        self.slices = nnx.List(slices)

    def __call__(self, x: Array) -> list[Array]:
        outs = []
        for sl in self.slices:
            x = sl(x)
            outs.append(x)
        return outs


class NetLinLayer(nnx.Module):
    """Dropout then a bias-free 1x1 conv to one channel (taming's `lin{k}.model`)."""

    def __init__(self, cin: int, rate: float, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(rate, deterministic=True)
        self.conv = nnx.Conv(cin, 1, (1, 1), use_bias=False, rngs=rngs)

    def __call__(self, x: Array, rngs: nnx.Rngs | None = None) -> Array:
        return self.conv(self.dropout(x, rngs=rngs))


class LPIPS(nnx.Module):
    """LPIPS distance between two batches of NHWC images in [-1, 1] -> [B] (fp32)."""

    def __init__(self, config: LPIPSConfig | None = None, *, rngs: nnx.Rngs):
        self.config = c = config or LPIPSConfig()
        self.net = VGGFeatures(c, rngs, jnp.dtype(c.dtype))
        self.lins = nnx.List([NetLinLayer(ch, c.dropout, rngs) for ch in c.channels])

    def __call__(self, input: Array, target: Array, *, rngs: nnx.Rngs | None = None) -> Array:
        """Distance per image; `rngs` is needed only when dropout is on (`.train()`)."""
        if input.shape != target.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {input.shape} vs {target.shape}")
        dt = jnp.dtype(self.config.dtype)
        # Two passes (not one over the concatenation): the target's pass needs no gradient.
        # LPIPS(x, x) is 0 exactly in eager mode; compiled, XLA may leave ~1e-16.
        feats_in = self.net(scale_inputs(input.astype(jnp.float32)).astype(dt))
        feats_tg = self.net(scale_inputs(target.astype(jnp.float32)).astype(dt))
        total = jnp.zeros((input.shape[0],), jnp.float32)
        for f_in, f_tg, lin in zip(feats_in, feats_tg, self.lins, strict=True):
            eps = self.config.eps
            diff = jnp.square(
                normalize_tensor(f_in.astype(jnp.float32), eps)
                - normalize_tensor(f_tg.astype(jnp.float32), eps)
            )
            total = total + jnp.mean(lin(diff, rngs), axis=(1, 2, 3))  # spatial average
        return total
