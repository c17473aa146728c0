"""Report-to-CXR generation: our image-constrained sampler against LLM-CXR's PyTorch generate.

Same random GPT-NeoX weights in both (6 layers, hidden 512, 8 heads, vocabulary 51,305 = 50,281
text ids + 1,024 image codes, fp32), a 64-token prompt of random text ids (the same prompt for
both sides), nucleus sampling with top_p 0.92, on this machine's CPU, in one run. Reports
latency per sample at batch 1 and throughput (samples/s) at batch 16.

- Ours: `decode.generate(..., max_new_tokens=256, sampler=Sampler(top_p=0.92),
  vocab_range=(50281, 51305))`: only the 1,024 image-code logits are computed and sampled, so
  one pass yields exactly 256 valid codes per sample (checked). Compiled before timing.
- PyTorch, LLM-CXR settings: `GPTNeoXForCausalLM.generate(do_sample=True, top_p=0.92, top_k=0,
  max_new_tokens=300)` over the whole vocabulary, stopping at `### End`, as the original does.
  The original then keeps a sample only if exactly 256 image codes came out and otherwise
  resamples. With random weights almost no attempt gives 256 codes, so that loop would never end
  here: we time ONE attempt and report it as if the first attempt always succeeded. This is a
  LOWER BOUND on the original's cost; the real original costs (attempts per sample) x this. The
  table says how many rows of that attempt actually had 256 codes.
- PyTorch, constrained (informative): the same generate with a LogitsProcessor that masks every
  id but the image codes and max_new_tokens=256, i.e. the same work we do. Comparing the two
  PyTorch rows separates what the constraint saves from what the implementation saves.

Ratio = our samples/s / PyTorch samples/s (target: >= 3x against the LLM-CXR settings).

    python benchmarks/generate.py [--batch 1 16] [--prompt 64] [--reps 3] [--layers 6] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import numpy as np
import torch
import transformers
from timing import bench_gpt_neox_config, median_seconds, recorded

from llmcxr_jax.convert.hf_gpt_neox import load_hf_model
from llmcxr_jax.decode import Sampler, generate

TEXT_VOCAB = 50281  # GPT-NeoX BPE + dolly's and LLM-CXR's special tokens
IMAGE_LO, IMAGE_HI = TEXT_VOCAB, TEXT_VOCAB + 1024  # image codes: ids 50281..51304
N_CODES = 256  # a 16x16 VQ-GAN code grid
END_ID = 50277  # dolly's `### End`, where the original generation stops
TOP_P = 0.92
LLMCXR_MAX_NEW = 300  # the original's max_new_tokens for images


class ImageOnly(transformers.LogitsProcessor):
    """Probability 0 for every id outside the image codes (applied before top-p)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, -float("inf"))
        out[:, IMAGE_LO:IMAGE_HI] = scores[:, IMAGE_LO:IMAGE_HI]
        return out


def count_codes(new_tokens: np.ndarray) -> np.ndarray:
    """Image codes per row among the generated ids."""
    return ((new_tokens >= IMAGE_LO) & (new_tokens < IMAGE_HI)).sum(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    hf_cfg = bench_gpt_neox_config(args.layers, vocab_size=IMAGE_HI)
    torch.manual_seed(args.seed)
    hf = transformers.GPTNeoXForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        model = load_hf_model(d, vocab_pad_multiple=128)
    cfg = model.config

    print(
        f"jax devices: {jax.devices()}; {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}; jax {jax.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(
        f"model: {args.layers} layers, hidden 512, vocab 51,305 (1,024 image codes), "
        f"{cfg.num_params() / 1e6:.1f} M params fp32, same random weights both sides"
    )
    print(
        f"task: {args.prompt}-token prompt -> {N_CODES} image codes, top_p {TOP_P}, "
        f"median of {args.reps}; load average {os.getloadavg()[0]:.2f} (the CPU may be shared)\n"
    )
    print(
        "| batch | ours s/sample | ours samples/s | PyTorch LLM-CXR s/sample (1 attempt) "
        "| PyTorch LLM-CXR samples/s (1 attempt) | ratio | rows with 256 codes "
        "| PyTorch constrained samples/s | ratio |"
    )
    print("|---" * 9 + "|")

    sampler = Sampler(top_p=TOP_P)
    rng = np.random.default_rng(args.seed)
    for b in args.batch:
        prompts = rng.integers(1, END_ID, (b, args.prompt))  # plain text ids, no special tokens
        pt_in = torch.tensor(prompts)
        pt_mask = torch.ones_like(pt_in)

        def run_jax(prompts=prompts):
            out = generate(
                model,
                prompts,
                max_new_tokens=N_CODES,
                sampler=sampler,
                vocab_range=(IMAGE_LO, IMAGE_HI),
                rng=args.seed,
            )
            return jax.block_until_ready(out)

        def run_llmcxr(pt_in=pt_in, pt_mask=pt_mask):
            torch.manual_seed(args.seed)
            with torch.no_grad():
                return hf.generate(
                    pt_in,
                    attention_mask=pt_mask,
                    do_sample=True,
                    top_p=TOP_P,
                    top_k=0,
                    max_new_tokens=LLMCXR_MAX_NEW,
                    eos_token_id=END_ID,
                    pad_token_id=0,
                )

        def run_constrained(pt_in=pt_in, pt_mask=pt_mask):
            torch.manual_seed(args.seed)
            with torch.no_grad():
                return hf.generate(
                    pt_in,
                    attention_mask=pt_mask,
                    do_sample=True,
                    top_p=TOP_P,
                    top_k=0,
                    max_new_tokens=N_CODES,
                    min_new_tokens=N_CODES,
                    eos_token_id=None,
                    pad_token_id=0,
                    logits_processor=transformers.LogitsProcessorList([ImageOnly()]),
                )

        # First calls: compile ours, warm PyTorch, and check what each produces.
        ours = np.asarray(run_jax().tokens)
        assert ours.shape == (b, N_CODES), ours.shape
        assert ((ours >= IMAGE_LO) & (ours < IMAGE_HI)).all(), "ours produced a non-image id"
        llmcxr_ok = int((count_codes(run_llmcxr().numpy()[:, args.prompt :]) == N_CODES).sum())
        constrained = run_constrained().numpy()[:, args.prompt :]
        assert (count_codes(constrained) == N_CODES).all(), "constrained PyTorch: not 256 codes"

        t_ours = median_seconds(run_jax, args.reps, warmup=False)
        t_llmcxr = median_seconds(run_llmcxr, args.reps, warmup=False)
        t_constrained = median_seconds(run_constrained, args.reps, warmup=False)
        sps_ours, sps_llmcxr, sps_con = b / t_ours, b / t_llmcxr, b / t_constrained
        print(
            f"| {b} | {t_ours / b:.3f} | {sps_ours:.2f} | {t_llmcxr / b:.3f} | {sps_llmcxr:.3f} "
            f"| {sps_ours / sps_llmcxr:.1f}x | {llmcxr_ok}/{b} | {sps_con:.3f} "
            f"| {sps_ours / sps_con:.1f}x |",
            flush=True,
        )

    print(
        "\nPyTorch LLM-CXR settings: one attempt of the original's generate (full vocabulary, "
        f"top_p {TOP_P}, {LLMCXR_MAX_NEW} new tokens). The original resamples every row that "
        f"lacks exactly {N_CODES} image codes, so its real cost is (attempts per sample) x this "
        "figure: the LLM-CXR column is a lower bound on its cost (an upper bound on its "
        "samples/s), as if the first attempt always succeeded. 'rows with 256 codes' shows how "
        "many rows of that attempt would have been kept. Ours needs one pass: every row "
        f"holds exactly {N_CODES} image codes (asserted). PyTorch constrained = the same "
        f"generate restricted to image ids by a LogitsProcessor, {N_CODES} new tokens (the "
        "same work as ours)."
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    with recorded("generate"):
        main()
