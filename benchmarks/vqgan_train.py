"""VQ-GAN training step on a CPU: one device against one device per core (data parallel).

The demo's VQ-GAN (configs/vqgan_demo.py: 64x64, f8, clinical loss on, a classifier of the
`tiny` preset with random weights), batch 16, fp32. XLA's CPU client runs most of one
program's convolution work on a single thread, so on a 2-core machine the jitted step uses
about one core; split over one CPU device per core (mesh (N, 1, 1), the batch sharded, the
state replicated, gradients all-reduced) it uses all of them. The reference is the same step on
one device, in the same run; both start from the same state and the benchmark checks that
their first-step losses agree.

    python benchmarks/vqgan_train.py [--devices 2] [--steps 5] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import sys

if "jax" not in sys.modules:  # fake CPU devices must be requested before JAX starts
    _n = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), None)
    if _n is None and "--devices" in sys.argv:
        _n = sys.argv[sys.argv.index("--devices") + 1]
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={_n or min(os.cpu_count() or 1, 8)}"
    )

import jax
import numpy as np
import optax
from flax import nnx
from timing import median_seconds, recorded

from llmcxr_jax import sharding
from llmcxr_jax.configs import load
from llmcxr_jax.models import densenet
from llmcxr_jax.train import vqgan as train_vqgan

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "vqgan_demo.py")


def build(cfg, width: int):
    """(jitted step, state, batch, frozen states) for a (width, 1, 1) mesh."""
    mesh = sharding.make_mesh((width, 1, 1))
    vq_cfg = train_vqgan.vqgan_config(cfg)
    ae = train_vqgan.init_autoencoder(cfg, vq_cfg)
    disc = train_vqgan.init_discriminator(cfg)
    clf_cfg = densenet.get_preset(cfg.classifier.preset, num_classes=6, in_channels=1)
    clf = densenet.DenseNet(clf_cfg, rngs=nnx.Rngs(0))
    frozen, frozen_states = train_vqgan._frozen(None, clf, tuple(cfg.loss.clinical_features))
    tx_ae, tx_disc = optax.adam(cfg.optim.lr), optax.adam(cfg.optim.disc_lr)
    ae_def, disc_def, state = train_vqgan.init_state(ae, disc, tx_ae, tx_disc)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = sharding.logical_sharding(mesh, ("activation_batch",))
    step = jax.jit(
        train_vqgan.make_train_step(
            ae_def, disc_def, tx_ae, tx_disc, train_vqgan.loss_weights(cfg), frozen, vq_cfg.n_embed
        ),
        in_shardings=(rep, batch_sh, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
    r = vq_cfg.resolution
    x = np.random.default_rng(0).uniform(-1, 1, (cfg.data.batch_size, r, r, 3))
    batch = {"image": jax.device_put(x.astype(np.float32), batch_sh)}
    return step, jax.device_put(state, rep), batch, jax.device_put(frozen_states, rep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=min(os.cpu_count() or 1, 8))
    ap.add_argument("--steps", type=int, default=5, help="steps per timed repetition")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    cfg = load(CONFIG)
    print(
        f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, "
        f"{jax.local_device_count()} CPU devices; jax {jax.__version__}"
    )
    print(
        f"model: {cfg.model} (configs/vqgan_demo.py), batch {cfg.data.batch_size}, fp32; "
        f"median of {args.reps} x {args.steps} steps\n"
    )
    print("| devices | s/step | images/s | speed-up | first-step loss |")
    print("|---|---|---|---|---|")
    base = None
    for width in (1, args.devices):
        step, state, batch, frozen = build(cfg, width)
        state, m = step(state, batch, frozen)  # compiles
        first = float(m["loss"])
        holder = {"state": state}

        def run(step=step, batch=batch, frozen=frozen, holder=holder) -> None:
            for _ in range(args.steps):
                holder["state"], m = step(holder["state"], batch, frozen)
            jax.block_until_ready(m)

        t = median_seconds(run, args.reps, warmup=False) / args.steps
        base = base or (t, first)
        print(
            f"| {width} | {t:.3f} | {cfg.data.batch_size / t:.1f} | {base[0] / t:.2f}x "
            f"| {first:.4f} |",
            flush=True,
        )
    np.testing.assert_allclose(first, base[1], rtol=1e-5, err_msg="first-step losses differ")


if __name__ == "__main__":
    with recorded("vqgan_train"):
        main()
