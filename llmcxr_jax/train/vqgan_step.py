"""The pure VQ-GAN train step with LLM-CXR's clinical-information-preserving loss.

LLM-CXR never released this part. The generator loss is taming's `VQLPIPSWithDiscriminator`
plus a clinical term:

    nll  = l1_weight * |x - x'| + perceptual_weight * LPIPS(x, x')
           + clinical_weight * sum_f mean((f(x) - f(x'))^2)          (f: CXR classifier features)
    loss = nll + d_weight * disc_factor * (-mean D(x')) + codebook_weight * codebook_loss

with taming's adaptive weight `d_weight = |grad_last nll| / (|grad_last g| + 1e-4)` (clipped to
[0, 1e4], times `disc_weight`) on the decoder's last layer, and `disc_factor` 0 before
`disc_start`. The discriminator (PatchGAN, BatchNorm) minimises the hinge (or vanilla) loss on
real images and the detached reconstructions.

One pure, jitted `train_step(state, batch, frozen)` does both updates: the autoencoder runs
forward once (`jax.vjp`), the loss networks are differentiated with respect to the
reconstruction only, and a single backward pass through the autoencoder takes the combined
cotangent. Deviations from taming, for speed: the discriminator step reuses this step's
reconstruction (taming recomputes it after the generator update), the discriminator's
running statistics move only in its own step, and before `disc_start` the discriminator is
not run at all (its terms are zero there; see `make_train_step`).

Channels: batches arrive as [B, H, W, 3] (grey films replicated). The autoencoder adapts its
input itself (`vqgan.to_channels`), and every loss compares the reconstruction with the batch in
the model's `out_ch` channels: for a grey model the channel mean, which L1, the clinical loss
and the discriminator (built with `input_nc = out_ch`) see as they are, and LPIPS (VGG, RGB) as
the grey channel repeated to three.

Data parallel over the mesh: the batch is sharded on (`data`, `fsdp`), the state replicated;
XLA inserts the gradient all-reduce and BatchNorm sees the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from llmcxr_jax.models.discriminator import D_LOSSES, NLayerDiscriminator
from llmcxr_jax.models.vqgan import VQGAN, to_channels

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class VQGANTrainState:
    step: Array
    ae: nnx.State  # VQ-GAN parameters
    disc: nnx.State  # discriminator parameters
    disc_stats: nnx.State  # discriminator BatchNorm statistics
    opt_ae: Any
    opt_disc: Any
    code_usage: Array  # decayed count of each code's use, for dead-code monitoring


@dataclasses.dataclass(frozen=True)
class Frozen:
    """Loss networks that are not trained: their graphdefs (static) and states (arguments)."""

    lpips: tuple[nnx.GraphDef, nnx.State] | None
    classifier: tuple[nnx.GraphDef, nnx.State, tuple[str, ...]] | None


@dataclasses.dataclass(frozen=True)
class LossWeights:
    l1: float = 1.0
    perceptual: float = 1.0
    clinical: float = 1.0
    codebook: float = 1.0
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    disc_start: int = 10000
    disc_loss: str = "hinge"
    # > 0: codes whose usage (a 0.99-decayed count of assignments) falls below this are re-seeded
    # with encoder outputs of the batch (see `restart_dead_codes`); 0: off (taming's behaviour)
    code_restart_below: float = 0.0


def restart_dead_codes(
    codebook: Array, usage: Array, z: Array, key: Array, below: float
) -> tuple[Array, Array, Array]:
    """(codebook, usage, restarted count): codes used less than `below` re-seeded from `z`.

    Why: the demo's codebook collapsed (about 15 of 256 codes in use after 100 steps, with the
    plain VQ objective at either learning rate tried), so 64 codes per film carried too little
    to keep a small finding. A dead code set to an encoder output of the batch lies where the
    encoder's outputs are and gets assignments again (Jukebox's codebook restarts). Restarted
    codes get usage 1.0, so an unused one is re-seeded again only after ~70 steps at 0.5.
    """
    dead = usage < below
    flat = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]).astype(codebook.dtype)
    pick = jax.random.randint(key, (codebook.shape[0],), 0, flat.shape[0])
    new_codebook = jnp.where(dead[:, None], flat[pick], codebook)
    return new_codebook, jnp.where(dead, 1.0, usage), jnp.sum(dead)


def _last_layer_grad(head_in: Array, kernel: Array, cotangent: Array) -> Array:
    """Gradient w.r.t. the decoder's conv_out kernel of a loss whose gradient at the output is
    `cotangent` (the bias does not change it)."""

    def conv(k: Array) -> Array:
        return jax.lax.conv_general_dilated(
            head_in,
            k.astype(head_in.dtype),
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ).astype(jnp.float32)

    return jax.vjp(conv, kernel)[1](cotangent)[0]


def clinical_loss(frozen: Frozen, frozen_states: Any, x: Array, xrec: Array) -> Array:
    """Feature matching between the CXR classifier's view of the input and the reconstruction."""
    from llmcxr_jax.models import densenet

    graphdef, _, names = frozen.classifier
    clf = nnx.merge(graphdef, frozen_states["classifier"])
    size = clf.config.image_size
    target = jax.lax.stop_gradient(clf.features(densenet.xrv_preprocess(x, size)))
    pred = clf.features(densenet.xrv_preprocess(xrec, size))
    return sum(jnp.mean(jnp.square(pred[n] - target[n])) for n in names) / len(names)


_GAN_METRICS = ("g_loss", "d_weight", "d_loss", "logits_real", "logits_fake")


def make_train_step(
    ae_graphdef: nnx.GraphDef,
    disc_graphdef: nnx.GraphDef,
    tx_ae: optax.GradientTransformation,
    tx_disc: optax.GradientTransformation,
    weights: LossWeights,
    frozen: Frozen,
    n_embed: int,
    *,
    run_disc_before_start: bool = False,
):
    """The pure step `(state, batch, frozen_states) -> (state, metrics)`.

    Before `disc_start` the GAN terms are zero (taming's `disc_factor` 0), so the step skips the
    discriminator (`lax.cond`): the same updates, and a demo-f8 step at batch 16 on 2 CPU
    cores took 1.20-1.36 s instead of 1.44-1.54 s (the demo's 300 steps never reach its
    start). Its BatchNorm running statistics, which no loss reads, then stay put.
    `run_disc_before_start` runs it anyway (for taming's logged g_loss and logits).
    """
    d_loss_fn = D_LOSSES[weights.disc_loss]

    def train_step(state: VQGANTrainState, batch: dict[str, Array], frozen_states: Any):
        images = batch["image"].astype(jnp.float32)  # [B, H, W, 3]: the model adapts its input

        # -- generator: one autoencoder forward, loss gradients at the reconstruction ----------
        def ae_forward(ae_params: nnx.State):
            m = nnx.merge(ae_graphdef, ae_params)
            z = m.quant_conv(m.encoder(m.as_input(images)))  # = m.quantized, keeping z
            q = m.quantize(z)
            head_in = m.decoder.head_input(m.decoder.body(m.post_quant_conv(q.z_q)))
            xrec = m.decoder.conv_out(head_in).astype(jnp.float32)
            return (xrec, q.loss), (q.codes, head_in, z)

        (xrec, qloss), ae_vjp, (codes, head_in, z_enc) = jax.vjp(ae_forward, state.ae, has_aux=True)
        x = to_channels(images, xrec.shape[-1])  # the loss target; grey model: the channel mean

        def nll_fn(xr: Array):
            l1 = jnp.mean(jnp.abs(x - xr))
            terms = {"l1": l1}
            total = weights.l1 * l1
            if frozen.lpips is not None:
                lp = nnx.merge(frozen.lpips[0], frozen_states["lpips"])
                terms["perceptual"] = jnp.mean(lp(to_channels(x, 3), to_channels(xr, 3)))
                total = total + weights.perceptual * terms["perceptual"]
            if frozen.classifier is not None:
                terms["clinical"] = clinical_loss(frozen, frozen_states, x, xr)
                total = total + weights.clinical * terms["clinical"]
            return total, terms

        (nll, terms), g_nll = jax.value_and_grad(nll_fn, has_aux=True)(xrec)

        kernel = state.ae["decoder"]["conv_out"]["kernel"][...]
        disc_on = state.step >= weights.disc_start
        disc_factor = jnp.where(disc_on, weights.disc_factor, 0.0)

        def adversarial(_: Any) -> tuple[Array, Any, nnx.State, dict[str, Array]]:
            """The GAN terms: generator cotangent, discriminator gradients and statistics."""

            def g_fn(xr: Array, disc_params: nnx.State, disc_stats: nnx.State) -> Array:
                disc = nnx.merge(disc_graphdef, disc_params, disc_stats)  # train mode
                return -jnp.mean(disc(xr))  # (its running statistics move only in the D step)

            # (BatchStats mutated inside a grad must be traced by it: argnum 2, grad dropped)
            g_loss, (g_g, _) = jax.value_and_grad(g_fn, argnums=(0, 2))(
                xrec, state.disc, state.disc_stats
            )
            gn = jnp.linalg.norm(_last_layer_grad(head_in, kernel, g_nll))
            gg = jnp.linalg.norm(_last_layer_grad(head_in, kernel, g_g))
            d_weight = jax.lax.stop_gradient(
                jnp.clip(gn / (gg + 1e-4), 0.0, 1e4) * weights.disc_weight
            )
            fake = jax.lax.stop_gradient(xrec)

            def d_fn(disc_params: nnx.State, disc_stats: nnx.State):
                disc = nnx.merge(disc_graphdef, disc_params, disc_stats)
                logits_real, logits_fake = disc(x), disc(fake)
                loss = disc_factor * d_loss_fn(logits_real, logits_fake)
                return loss, (nnx.state(disc, nnx.BatchStat), logits_real, logits_fake)

            (d_loss, (disc_stats, lr, lf)), (d_grads, _) = jax.value_and_grad(
                d_fn, argnums=(0, 1), has_aux=True
            )(state.disc, state.disc_stats)
            logged = {
                "g_loss": g_loss,
                "d_weight": d_weight,
                "d_loss": d_loss,
                "logits_real": jnp.mean(lr),
                "logits_fake": jnp.mean(lf),
            }
            return d_weight * disc_factor * g_g, d_grads, disc_stats, logged

        def idle(_: Any) -> tuple[Array, Any, nnx.State, dict[str, Array]]:
            """Before disc_start: what `adversarial` gives there (zero cotangent, zero
            gradients) without running the discriminator; its GAN metrics read 0."""
            zeros = jax.tree.map(jnp.zeros_like, state.disc)
            logged = {k: jnp.zeros((), jnp.float32) for k in _GAN_METRICS}
            return jnp.zeros_like(g_nll), zeros, state.disc_stats, logged

        if run_disc_before_start:
            g_cotangent, d_grads, disc_stats, gan_metrics = adversarial(None)
        else:
            g_cotangent, d_grads, disc_stats, gan_metrics = jax.lax.cond(
                disc_on, adversarial, idle, None
            )
        g_loss = gan_metrics["g_loss"]
        d_weight = gan_metrics["d_weight"]
        cotangent = (g_nll + g_cotangent, jnp.asarray(weights.codebook, qloss.dtype))
        (ae_grads,) = ae_vjp(cotangent)
        updates, opt_ae = tx_ae.update(ae_grads, state.opt_ae, state.ae)
        ae = optax.apply_updates(state.ae, updates)
        # the optimizer steps in both branches, as taming's does on its zero loss before the start
        d_updates, opt_disc = tx_disc.update(d_grads, state.opt_disc, state.disc)
        disc = optax.apply_updates(state.disc, d_updates)

        # -- codebook usage ---------------------------------------------------------------------
        hist = jnp.bincount(codes.reshape(-1), length=n_embed).astype(jnp.float32)
        p = hist / jnp.sum(hist)
        perplexity = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0)))
        usage = 0.99 * state.code_usage + hist
        restarted = jnp.zeros((), jnp.int32)
        if weights.code_restart_below > 0:
            emb = ae["quantize"]["embedding"]["embedding"]
            key = jax.random.fold_in(jax.random.key(0), state.step)
            book, usage, restarted = restart_dead_codes(
                emb[...], usage, z_enc, key, weights.code_restart_below
            )
            emb[...] = book

        metrics = {
            **terms,
            "nll": nll,
            "codebook_loss": qloss,
            **gan_metrics,
            "disc_factor": disc_factor,
            "perplexity": perplexity,
            "codes_used": jnp.sum(hist > 0),
            "dead_codes": jnp.sum(usage < 1e-3),
            "restarted_codes": restarted,
            "loss": nll + d_weight * disc_factor * g_loss + weights.codebook * qloss,
        }
        new_state = VQGANTrainState(
            step=state.step + 1,
            ae=ae,
            disc=disc,
            disc_stats=disc_stats,
            opt_ae=opt_ae,
            opt_disc=opt_disc,
            code_usage=usage,
        )
        return new_state, metrics

    return train_step


def init_state(
    ae: VQGAN, disc: NLayerDiscriminator, tx_ae, tx_disc
) -> tuple[nnx.GraphDef, nnx.GraphDef, VQGANTrainState]:
    ae_graphdef, ae_params = nnx.split(ae, nnx.Param)
    disc_graphdef, disc_params, disc_stats = nnx.split(disc, nnx.Param, nnx.BatchStat)
    state = VQGANTrainState(
        step=jnp.zeros((), jnp.int32),
        ae=ae_params,
        disc=disc_params,
        disc_stats=disc_stats,
        opt_ae=tx_ae.init(ae_params),
        opt_disc=tx_disc.init(disc_params),
        code_usage=jnp.zeros((ae.config.n_embed,), jnp.float32),
    )
    return ae_graphdef, disc_graphdef, state


def loss_weights(config: ml_collections.ConfigDict) -> LossWeights:
    loss = config.loss
    return LossWeights(
        l1=loss.l1_weight,
        perceptual=loss.perceptual_weight,
        clinical=loss.clinical_weight,
        codebook=loss.codebook_weight,
        disc_weight=loss.disc_weight,
        disc_factor=loss.disc_factor,
        disc_start=loss.disc_start,
        disc_loss=loss.disc_loss,
        code_restart_below=float(loss.get("code_restart_below", 0.0)),
    )
