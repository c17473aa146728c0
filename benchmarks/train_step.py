"""LM train step throughput: our jitted `train_step` against transformers + torch.optim.AdamW.

Same random GPT-NeoX weights in both (6 layers, hidden 512, 8 heads, MLP 2048, rotary 0.25,
vocabulary 51,305, fp32), the same batch of 4 x 512 random text ids, in one run on this
machine's CPU. One step = forward, mean token cross-entropy, backward, global-norm clipping at
1.0, AdamW (LLM-CXR's lr 5e-6, betas 0.9/0.999, eps 1e-8, weight decay 0).

- Ours: `lm_step.make_train_step` (the step `llmcxr-jax train` runs), jitted with the state
  donated, on one packed segment per row (targets shifted by one, the last position masked).
- PyTorch: `GPTNeoXForCausalLM(input_ids, labels=input_ids)` (shifts inside), `backward`,
  `clip_grad_norm_`, `torch.optim.AdamW(foreach=True)`.

With `--loss-fraction F` only the last F of each row's positions carry a target (as the
response-only loss does; PyTorch gets -100 labels elsewhere) and ours is also timed with
`max_loss_fraction=F`: logits and cross-entropy at the loss positions only.

Both losses of the first step are printed: they must agree (same weights, same tokens).
FLOPs per token are counted once for both (6 x matmul parameters + 12 L D T for attention;
the input embedding is a lookup), and set against this CPU's fp32 matmul peak measured in the
same run (the best of torch and XLA on a 2048^3 matmul).

    python benchmarks/train_step.py [--batch 4] [--seq 512] [--reps 5] [--layers 6]
        [--attention-block 64] [--loss-fraction 0.3]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import transformers
from flax import nnx
from timing import bench_gpt_neox_config, median_seconds, recorded, seconds

from llmcxr_jax.accelerators import flops_per_token
from llmcxr_jax.convert.hf_gpt_neox import load_hf_model
from llmcxr_jax.train import lm_step, optim

OPTIM = ml_collections.ConfigDict(
    {
        "lr": 5e-6,
        "min_lr": 0.0,
        "warmup_steps": 0,  # constant lr: both sides take the same update
        "warmup": "log",
        "decay": "constant",
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "clip": 1.0,
    }
)


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """Best fp32 GFLOP/s of an n^3 matmul: (torch, XLA)."""
    a = torch.randn(n, n)
    t_torch = min(seconds(lambda: torch.mm(a, a), reps))
    x = jnp.ones((n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    f(x, x).block_until_ready()
    t_xla = min(seconds(lambda: f(x, x).block_until_ready(), reps))
    flops = 2.0 * n**3
    return flops / t_torch / 1e9, flops / t_xla / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument(
        "--attention-block",
        type=int,
        default=0,
        help="also time ours with query blocks of this many rows (causal blocks skipped)",
    )
    ap.add_argument(
        "--loss-fraction",
        type=float,
        default=1.0,
        help="targets on the last this fraction of each row; <1 also times logits there only",
    )
    args = ap.parse_args()
    b, t = args.batch, args.seq
    if not 0.0 < args.loss_fraction <= 1.0:
        raise SystemExit(f"--loss-fraction {args.loss_fraction} must be in (0, 1]")
    first_target = t - max(1, round(args.loss_fraction * t))  # positions before it: no target

    hf_cfg = bench_gpt_neox_config(args.layers, vocab_size=51305)
    torch.manual_seed(0)
    hf = transformers.GPTNeoXForCausalLM(hf_cfg).train()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = load_hf_model(d, vocab_pad_multiple=128)
    cfg = model.config

    tokens = np.random.default_rng(0).integers(1, 50280, (b, t)).astype(np.int32)

    # --- PyTorch ---------------------------------------------------------------------------
    opt = torch.optim.AdamW(
        hf.parameters(), lr=5e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=True
    )
    pt_tokens = torch.tensor(tokens, dtype=torch.long)
    pt_labels = pt_tokens.clone()
    pt_labels[:, : first_target + 1] = -100  # label j is the target of position j - 1

    def torch_step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = hf(input_ids=pt_tokens, labels=pt_labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    # --- ours ------------------------------------------------------------------------------
    tx = optim.optimizer(OPTIM)
    mask = np.ones((b, t), np.float32)
    mask[:, -1] = 0.0  # the last position has no next token
    mask[:, :first_target] = 0.0
    batch = {
        "tokens": jnp.asarray(tokens),
        "targets": jnp.asarray(np.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)),
        "loss_mask": jnp.asarray(mask),
        "positions": jnp.asarray(np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))),
        "segment_ids": jnp.ones((b, t), jnp.int32),
    }
    rng = jax.random.key(0)

    def jax_stepper(attention_block: int, max_loss_fraction: float = 0.0):
        variant = nnx.merge(*nnx.split(model))
        variant.config = cfg.replace(attention_block=attention_block)
        graphdef, params = nnx.split(variant, nnx.Param)
        step = jax.jit(
            lm_step.make_train_step(
                graphdef, tx, lm_step.LossConfig(max_loss_fraction=max_loss_fraction)
            ),
            donate_argnums=(0,),
        )
        holder = {"state": lm_step.init_state(jax.tree.map(jnp.copy, params), tx)}

        def jax_step() -> float:
            holder["state"], metrics = step(holder["state"], batch, rng)
            return float(metrics["loss"])  # blocks until the step is done

        return jax_step

    ours = [("JAX (ours)", jax_stepper(0))]
    if args.attention_block:
        ours.append(
            (
                f"JAX (ours), attention blocks of {args.attention_block}",
                jax_stepper(args.attention_block),
            )
        )
    if args.loss_fraction < 1.0:
        ours.append(
            (
                f"JAX (ours), logits at the loss positions only ({args.loss_fraction:.0%})",
                jax_stepper(args.attention_block, args.loss_fraction),
            )
        )
    loss_pt = torch_step()  # first steps: same weights, so the same loss
    for name, jax_step in ours:
        loss_jax = jax_step()  # also compiles
        if abs(loss_pt - loss_jax) > 1e-4 * max(1.0, abs(loss_pt)):  # before timing anything
            raise SystemExit(f"{name}: the first-step losses differ: {loss_pt} vs {loss_jax}")
    t_pt = median_seconds(torch_step, args.reps, warmup=False)
    t_ours = [(name, median_seconds(f, args.reps, warmup=False)) for name, f in ours]

    peak_torch, peak_xla = matmul_peak_gflops()
    peak = max(peak_torch, peak_xla)
    flops_step = flops_per_token(cfg, t) * b * t
    n_tok = b * t
    print(
        f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}; jax {jax.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}"
    )
    print(
        f"model: {args.layers} layers, hidden 512, vocab 51,305, {cfg.num_params() / 1e6:.1f} M "
        f"params fp32; batch {b} x {t}; {flops_step / 1e9:.0f} GFLOP per step; "
        f"median of {args.reps}"
    )
    print(f"fp32 matmul peak (2048^3): torch {peak_torch:.1f} GFLOP/s, XLA {peak_xla:.1f} GFLOP/s")
    print(f"first-step loss: PyTorch {loss_pt:.6f}, JAX {loss_jax:.6f}\n")
    print(
        "| implementation | s/step | tokens/s | GFLOP/s | of matmul peak | speed-up |\n"
        "|---|---|---|---|---|---|"
    )
    for name, sec in (("PyTorch (transformers + AdamW)", t_pt), *t_ours):
        gf = flops_step / sec / 1e9
        print(
            f"| {name} | {sec:.3f} | {n_tok / sec:.0f} | {gf:.1f} | {gf / peak:.0%} | "
            f"{t_pt / sec:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    with recorded("train_step"):
        main()
