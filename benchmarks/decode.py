"""Decode throughput: our jitted KV-cache generation against transformers' PyTorch generate.

Same random GPT-NeoX weights in both (6 layers, hidden 512, 8 heads, vocabulary 51,305, fp32),
greedy decoding of 256 new tokens after a 64-token prompt, at batch 1 and 16, in one run on
this machine's CPU. Also prints ms/token against the memory-bandwidth floor: the bytes every
decode step must read (all parameters but the input embedding, plus the keys and values of the
tokens before it, on average) divided by the read bandwidth measured here.

    python benchmarks/decode.py [--batch 1 16] [--new-tokens 256] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from timing import bench_gpt_neox_config, median_seconds, recorded

from llmcxr_jax.convert.hf_gpt_neox import load_hf_model
from llmcxr_jax.decode import generate


def read_bandwidth_gbs(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Best sustained read bandwidth of a jitted reduction over an array larger than caches."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--cache-chunk", type=int, default=64, help="decode.generate's cache_chunk")
    args = ap.parse_args()

    hf_cfg = bench_gpt_neox_config(args.layers, vocab_size=51305)
    torch.manual_seed(0)
    hf = transformers.GPTNeoXForCausalLM(hf_cfg).eval()
    hf.generation_config.eos_token_id = None  # generate exactly new_tokens in both
    hf.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = load_hf_model(d, vocab_pad_multiple=128)
    cfg = model.config

    n_params = cfg.num_params()
    per_step_param_bytes = (n_params - cfg.vocab_size * cfg.hidden_size) * 4
    bw = read_bandwidth_gbs()
    print(
        f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}; jax {jax.__version__}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}"
    )
    print(
        f"model: {args.layers} layers, hidden 512, vocab 51,305, {n_params / 1e6:.1f} M params "
        f"fp32; read bandwidth measured {bw:.1f} GB/s"
    )
    print(
        f"task: greedy, {args.prompt}-token prompt, {args.new_tokens} new tokens, median of "
        f"{args.reps}; KV cache grown by {args.cache_chunk} slots per phase\n"
    )
    header = (
        "| batch | PyTorch ms/token | PyTorch tok/s | JAX ms/token | JAX tok/s | speed-up | "
        "floor ms/token | JAX / floor | same tokens |"
    )
    print(header)
    print("|---" * 9 + "|")

    rng = np.random.default_rng(0)
    for b in args.batch:
        prompts = rng.integers(1, 50280, (b, args.prompt))
        pt_in = torch.tensor(prompts)

        def run_torch(pt_in=pt_in):
            with torch.inference_mode():
                return hf.generate(
                    pt_in,
                    do_sample=False,
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    use_cache=True,
                )

        def run_jax(prompts=prompts):
            out = generate(
                model, prompts, max_new_tokens=args.new_tokens, cache_chunk=args.cache_chunk
            )
            return jax.block_until_ready(out)

        ref = run_torch().numpy()[:, args.prompt :]
        ours = np.asarray(run_jax().tokens)  # also compiles
        t_pt = median_seconds(run_torch, args.reps, warmup=False)
        t_jax = median_seconds(run_jax, args.reps, warmup=False)
        steps = args.new_tokens
        # keys and values a token needs: the prompt and the tokens before it (mean over steps)
        mean_len = args.prompt + (steps - 1) / 2
        cache_bytes = 2 * cfg.num_layers * b * mean_len * cfg.hidden_size * 4
        floor_ms = (per_step_param_bytes + cache_bytes) / (bw * 1e9) * 1e3
        same = (ours == ref).mean()
        print(
            f"| {b} | {t_pt / steps * 1e3:.2f} | {b * steps / t_pt:.0f} | "
            f"{t_jax / steps * 1e3:.2f} | {b * steps / t_jax:.0f} | "
            f"{t_pt / t_jax:.2f}x | {floor_ms:.2f} | {t_jax / steps * 1e3 / floor_ms:.2f}x | "
            f"{same:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    with recorded("decode"):
        main()
