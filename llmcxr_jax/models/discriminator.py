"""taming-transformers' PatchGAN discriminator and its losses, in Flax NNX.

VQ-GAN training (taming's `VQLPIPSWithDiscriminator`) needs the discriminator to behave exactly
like taming's `NLayerDiscriminator`, so that a taming training checkpoint resumes here and a
discriminator trained here loads back into taming:

- `main` is an `nnx.List` indexed like taming's `nn.Sequential` (activations included), so
  variable paths read like taming's keys (`main.3.scale` is `main.3.weight`) and the converter
  (convert/lpips.py) derives its table from the model.
- BatchNorm is PyTorch's, not `nnx.BatchNorm`: it normalises with the biased batch variance but
  keeps the *unbiased* one in `var` (momentum 0.1, eps 1e-5). Running statistics are
  `nnx.BatchStat`s; `model.train()` / `model.eval()` switch between batch and running statistics.
  taming trains with the discriminator in train mode in both the generator and the
  discriminator pass, so both passes update the statistics there.
- Convolutions have a bias exactly where taming's have one (none before a BatchNorm).
- A new model is initialised as taming's `.apply(weights_init)` leaves it: conv kernels
  N(0, 0.02), BatchNorm scale N(1, 0.02) and bias 0, conv biases PyTorch's default
  U(+-1/sqrt(fan_in)) (weights_init does not touch them). Same distributions, not the same draws.
- ActNorm (`use_actnorm=True`) keeps taming's data-dependent initialisation: the first call in
  train mode sets loc/scale from that batch and marks the layer initialised.

Layout is NHWC; the output is a [B, h, w, 1] map of patch logits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """taming's `NLayerDiscriminator(input_nc, ndf, n_layers, use_actnorm)` arguments."""

    input_nc: int = 3
    ndf: int = 64
    n_layers: int = 3
    use_actnorm: bool = False
    bn_momentum: float = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
    bn_eps: float = 1e-5
    dtype: str = "float32"  # compute dtype of the convolutions; norms and parameters stay fp32

    def __post_init__(self):
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")

    @property
    def use_bias(self) -> bool:
        """Whether the convolutions followed by a norm have a bias (not before BatchNorm)."""
        return self.use_actnorm

    def replace(self, **changes: Any) -> DiscriminatorConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscriminatorConfig:
        return cls(**d)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def _torch_bias_init(fan_in: int) -> Callable[..., Array]:
    """PyTorch's default Conv2d bias initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(cin: int, cout: int, stride: int, bias: bool, rngs: nnx.Rngs, dtype) -> nnx.Conv:
    """4x4 convolution, padding 1 on every side (taming's kw=4, padw=1)."""
    return nnx.Conv(
        cin,
        cout,
        (4, 4),
        strides=stride,
        padding=((1, 1), (1, 1)),
        use_bias=bias,
        kernel_init=nnx.initializers.normal(0.02),
        bias_init=_torch_bias_init(cin * 16),
        dtype=dtype,
        rngs=rngs,
    )


class LeakyReLU(nnx.Module):
    """Holds a place in `main` so indices match taming's Sequential."""

    def __init__(self, negative_slope: float = 0.2):
        self.negative_slope = negative_slope

    def __call__(self, x: Array) -> Array:
        return jax.nn.leaky_relu(x, self.negative_slope)


class BatchNorm2d(nnx.Module):
    """PyTorch's BatchNorm2d over the channel (last) axis.

    Train mode (`use_running_average=False`) normalises with the batch mean and biased variance
    and moves `mean`/`var` towards the batch mean and *unbiased* variance, as PyTorch does.
    `num_batches_tracked` is not kept: with a fixed momentum PyTorch never reads it.
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        epsilon: float = 1e-5,
        use_running_average: bool = False,
        rngs: nnx.Rngs,
    ):
        noise = jax.random.normal(rngs.params(), (num_features,), jnp.float32)
        self.scale = nnx.Param(1.0 + 0.02 * noise)
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            n = int(np.prod([x.shape[a] for a in axes]))
            if n < 2:
                raise ValueError("BatchNorm in train mode needs more than 1 value per channel")
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            m = self.momentum
            sg = jax.lax.stop_gradient
            self.mean[...] = (1.0 - m) * self.mean[...] + m * sg(mean)
            self.var[...] = (1.0 - m) * self.var[...] + m * sg(var) * (n / (n - 1))
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)

    def set_view(self, use_running_average: bool | None = None):
        """For `nnx.view`: True uses the running statistics (eval), False the batch's."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


class ActNorm(nnx.Module):
    """taming's ActNorm: y = scale * (x + loc), per channel.

    `initialized` (uint8, a BatchStat like the running statistics) is 0 until the first call in
    train mode, which sets loc = -mean and scale = 1 / (std + 1e-6) of that batch (unbiased std,
    as torch.std). Gradients still reach loc and scale in that call, as in taming.
    `use_running_average` is the eval switch (named so `model.train()` and `model.eval()` set it).
    """

    def __init__(self, num_features: int, *, use_running_average: bool = False):
        self.loc = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.initialized = nnx.BatchStat(jnp.zeros((), jnp.uint8))
        self.use_running_average = use_running_average

    def __call__(self, x: Array) -> Array:
        xf = x.astype(jnp.float32)
        loc, scale = self.loc[...], self.scale[...]
        if not self.use_running_average:
            sg = jax.lax.stop_gradient
            axes = tuple(range(x.ndim - 1))
            n = int(np.prod([x.shape[a] for a in axes]))
            mean = jnp.mean(sg(xf), axis=axes)
            std = jnp.sqrt(jnp.sum(jnp.square(sg(xf) - mean), axis=axes) / max(n - 1, 1))
            first = self.initialized[...] == 0
            # value of the batch statistics, gradient of the parameters (taming's no_grad copy_)
            loc = jnp.where(first, loc + sg(-mean - loc), loc)
            scale = jnp.where(first, scale + sg(1.0 / (std + 1e-6) - scale), scale)
            self.loc[...] = sg(loc)
            self.scale[...] = sg(scale)
            self.initialized[...] = jnp.ones((), jnp.uint8)
        return (scale * (xf + loc)).astype(x.dtype)

    def set_view(self, use_running_average: bool | None = None):
        """For `nnx.view`: True never initialises from the batch (eval)."""
        if use_running_average is not None:
            self.use_running_average = use_running_average


# --------------------------------------------------------------------------------------------
# The discriminator
# --------------------------------------------------------------------------------------------


class NLayerDiscriminator(nnx.Module):
    """PatchGAN discriminator (Pix2Pix), layer for layer taming's `NLayerDiscriminator`.

    Built in train mode, like a fresh PyTorch module; call `.eval()` for running statistics.
    """

    def __init__(self, config: DiscriminatorConfig | None = None, *, rngs: nnx.Rngs):
        c = config or DiscriminatorConfig()
        self.config = c
        dt = jnp.dtype(c.dtype)

        def norm(ch: int) -> nnx.Module:
            if c.use_actnorm:
                return ActNorm(ch)
            return BatchNorm2d(ch, momentum=c.bn_momentum, epsilon=c.bn_eps, rngs=rngs)

        layers: list[nnx.Module] = [_conv(c.input_nc, c.ndf, 2, True, rngs, dt), LeakyReLU()]
        mult = 1
        for n in range(1, c.n_layers + 1):  # n_layers - 1 stride-2 blocks, then one stride-1
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < c.n_layers else 1
            layers += [
                _conv(c.ndf * prev, c.ndf * mult, stride, c.use_bias, rngs, dt),
                norm(c.ndf * mult),
                LeakyReLU(),
            ]
        layers.append(_conv(c.ndf * mult, 1, 1, True, rngs, dt))  # one logit per patch
        self.main = nnx.List(layers)

    def __call__(self, x: Array) -> Array:
        """Images [B, H, W, input_nc] -> patch logits [B, h, w, 1] (fp32)."""
        h = x.astype(jnp.dtype(self.config.dtype))
        for layer in self.main:
            h = layer(h)
        return h.astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Losses (taming's vqperceptual.py)
# --------------------------------------------------------------------------------------------


def hinge_d_loss(logits_real: Array, logits_fake: Array) -> Array:
    """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
    return 0.5 * (real + fake)


def vanilla_d_loss(logits_real: Array, logits_fake: Array) -> Array:
    """0.5 * (mean(softplus(-real)) + mean(softplus(fake))): the non-saturating GAN loss."""
    real = jnp.mean(jax.nn.softplus(-logits_real.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.softplus(logits_fake.astype(jnp.float32)))
    return 0.5 * (real + fake)


D_LOSSES: dict[str, Callable[[Array, Array], Array]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}


def adopt_weight(weight: Any, global_step: Any, threshold: Any = 0, value: Any = 0.0) -> Any:
    """`value` before step `threshold`, `weight` from then on (turns the GAN loss on late).

    Python numbers give a Python number; a traced step (inside jit) gives an array.
    """
    if isinstance(global_step, (int, np.integer)) and isinstance(threshold, (int, np.integer)):
        return value if global_step < threshold else weight
    return jnp.where(jnp.asarray(global_step) < threshold, value, weight)
