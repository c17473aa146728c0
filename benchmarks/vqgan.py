"""VQ-GAN throughput: our jitted encode/decode against taming-transformers' PyTorch modules.

LLM-CXR's preset (f16, 1024 codes of dim 256, 256x256 images), the same random weights in
both, fp32, on this machine's CPU, in one run. Encode = image -> 256 codes; decode = 256 codes ->
image. Reports images/s and the ratio, and checks that both produce the same codes.

    python benchmarks/vqgan.py [--batch 1 8] [--reps 3]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
from timing import median_seconds, recorded

from llmcxr_jax.convert import taming
from llmcxr_jax.models import common
from llmcxr_jax.models.vqgan import VQGAN, get_preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llmcxr-f16")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    cfg = get_preset(args.preset)
    torch.manual_seed(0)
    ref = taming.taming_modules(cfg).eval()
    with torch.no_grad():
        ref.quantize.embedding.weight.normal_(0, 1.0)
    params, _ = taming.import_state_dict(ref.state_dict(), cfg)
    model = common.with_variables(VQGAN, cfg, params)
    encode = jax.jit(lambda m, x: m.encode(x))
    decode = jax.jit(lambda m, c: m.decode(c))

    print(
        f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; jax {jax.__version__}, torch {torch.__version__}"
    )
    print(
        f"model: {args.preset} ({cfg.resolution}px, {cfg.num_codes} codes, codebook "
        f"{cfg.n_embed}x{cfg.embed_dim}), fp32; median of {args.reps}\n"
    )
    print(
        "| batch | step | PyTorch images/s | JAX images/s | speed-up | same codes |\n"
        "|---|---|---|---|---|---|"
    )
    rng = np.random.default_rng(0)
    for b in args.batch:
        x = rng.uniform(-1, 1, (b, cfg.resolution, cfg.resolution, 3)).astype(np.float32)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        xj = jnp.asarray(x)
        with torch.inference_mode():
            codes_ref = ref.encode(xt)
        codes = np.asarray(encode(model, xj))
        same = f"{(codes == codes_ref.numpy()).mean():.1%}"
        cj = jnp.asarray(codes)

        def t_enc(xt=xt):
            with torch.inference_mode():
                ref.encode(xt)

        def t_dec(c=codes_ref):
            with torch.inference_mode():
                ref.decode(c)

        rows = [
            (
                "encode",
                median_seconds(t_enc, args.reps),
                median_seconds(lambda xj=xj: encode(model, xj).block_until_ready(), args.reps),
                same,
            ),
            (
                "decode",
                median_seconds(t_dec, args.reps),
                median_seconds(lambda cj=cj: decode(model, cj).block_until_ready(), args.reps),
                "",
            ),
        ]
        for step, t_pt, t_jax, s in rows:
            print(
                f"| {b} | {step} | {b / t_pt:.2f} | {b / t_jax:.2f} | {t_pt / t_jax:.2f}x | {s} |",
                flush=True,
            )


if __name__ == "__main__":
    with recorded("vqgan"):
        main()
