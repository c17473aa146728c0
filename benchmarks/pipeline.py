"""LM input pipeline: packing efficiency against LLM-CXR's batching, and throughput.

Two sample streams, each mixed 0.8 : 0.2 with dolly-15k-shaped instruction records:
- phantoms: the embedded phantom reports with 64 codes per image (the demo's VQ-GAN, demo-f8),
- Open-i-shaped: reports with Open-i's section lengths (FINDINGS 5-90 words, IMPRESSION 2-30)
  and 256 codes per image (LLM-CXR's f16 VQ-GAN at 256x256).
dolly-15k shapes: instruction ~ lognormal (median 12 words), context on 30% of records (median
90 words), response ~ lognormal (median 40 words, long tail).

Packing efficiency = real tokens / row capacity. Beside ours: the best a first-fit-decreasing
packing of the same samples reaches offline (a bound for packing whole paragraphs), and
LLM-CXR's batching, which pads each batch of 2 samples to the longer one, on the same samples
in the same order. Throughput = real tokens per second the pipeline delivers (1 host, its
threads), against the tokens per second a train step of the demo model consumes at the same
max_len (forward, backward, AdamW; jitted; this CPU).

    python benchmarks/pipeline.py [--batches 40] [--max-len 1024 2048]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from timing import recorded

from llmcxr_jax.data import instructions, phantoms, pipeline
from llmcxr_jax.models.gpt_neox import GPTNeoX, get_preset
from llmcxr_jax.tokenizer import MultimodalTokenizer

N_EMBED = 1024
_TEXT = (
    "the heart size is normal lungs are clear there is no pleural effusion or pneumothorax mild "
    "cardiomegaly small left basilar opacity likely atelectasis stable mediastinal contours "
    "degenerative changes of the spine no acute cardiopulmonary abnormality"
)
WORDS = tuple(_TEXT.split(" "))


def phantom_records(n: int, num_codes: int = 64) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        r = phantoms.generate(i, seed=0, resolution=64)
        r.pop("image")
        r["codes"] = rng.integers(0, N_EMBED, num_codes)
        out.append(r)
    return out


def openi_records(n: int, num_codes: int = 256) -> list[dict]:
    rng = np.random.default_rng(1)
    sent = lambda k: " ".join(rng.choice(WORDS, k)).capitalize() + "."
    out = []
    for i in range(n):
        findings = " ".join(sent(int(rng.integers(4, 12))) for _ in range(rng.integers(1, 8)))
        impression = sent(int(rng.integers(2, 30)))
        lab = np.full(14, -2, np.int8)
        lab[0] = 1
        out.append(
            {
                "id": f"CXR{i}_IM",
                "subject_id": f"r{i}",
                "study_id": f"r{i}",
                "view": "PA",
                "study_datetime": "",
                "findings": findings,
                "impression": impression,
                "labels": lab,
                "details": "{}",
                "codes": rng.integers(0, N_EMBED, num_codes),
            }
        )
    return out


def dolly_records(n: int) -> list[dict]:
    rng = np.random.default_rng(2)
    words = lambda median, cap: " ".join(
        rng.choice(WORDS, int(min(cap, max(1, rng.lognormal(np.log(median), 0.9)))))
    )
    return [
        {
            "instruction": words(12, 80) + "?",
            "context": words(90, 600) if rng.random() < 0.3 else "",
            "response": words(40, 900),
            "category": "",
        }
        for _ in range(n)
    ]


def ffd_efficiency(lengths: list[int], capacity: int) -> float:
    """First-fit decreasing over the whole sample: what packing whole paragraphs can reach."""
    bins: list[int] = []
    for n in sorted(lengths, reverse=True):
        for i, b in enumerate(bins):
            if b + n <= capacity:
                bins[i] += n
                break
        else:
            bins.append(n)
    return sum(lengths) / (len(bins) * capacity)


def train_step_tokens_per_s(vocab_size: int, batch: int, max_len: int, reps: int = 3) -> float:
    """Tokens/s a jitted train step (fwd, bwd, AdamW) of the demo LM consumes at max_len."""
    cfg = get_preset(
        "demo",
        vocab_size=vocab_size,
        vocab_pad_multiple=128,
        max_position_embeddings=max(2048, max_len),
    )
    model = GPTNeoX(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, tokens):
        def loss(p):
            logits, _ = nnx.merge(graphdef, p)(tokens)
            return optax.softmax_cross_entropy_with_integer_labels(
                logits[:, :-1], tokens[:, 1:]
            ).mean()

        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    tokens = jnp.ones((batch, max_len), jnp.int32)
    params, opt = jax.block_until_ready(step(params, opt, tokens))
    t = time.perf_counter()
    for _ in range(reps):
        params, opt = step(params, opt, tokens)
    jax.block_until_ready(params)
    return batch * max_len * reps / (time.perf_counter() - t)


def measure(
    records: list[dict],
    num_codes: int,
    tok: MultimodalTokenizer,
    n_batches: int,
    batch: int,
    max_len: int,
) -> dict[str, float]:
    image_text = pipeline.ImageTextExamples(
        records, stage=1, num_codes=num_codes, n_embed=N_EMBED, vqa_mode="none"
    )
    instr = pipeline.InstructionExamples(dolly_records(1000))
    paragraphs = pipeline.paragraph_dataset(image_text, instr, seed=0)
    # the same samples, in the same order, for the offline bound and LLM-CXR's batching
    lengths = [
        len(pipeline.tokenize(paragraphs[k], tok, "response")["inputs"]) for k in range(2000)
    ]
    lengths = [n for n in lengths if n <= max_len]
    pairs = np.asarray(lengths[: len(lengths) // 2 * 2]).reshape(-1, 2)
    llmcxr_eff = pairs.sum() / (2 * pairs.max(axis=1)).sum()

    batches = pipeline.LMBatches(
        paragraphs, tok, max_len=max_len, batch_size=batch, num_threads=os.cpu_count() or 2
    )
    batches.next_local()  # warm-up: threads started, first bins filled
    real, capacity = 0, 0
    t = time.perf_counter()
    for _ in range(n_batches):
        b = batches.next_local()
        real += int((b["segment_ids"] > 0).sum())
        capacity += b["segment_ids"].size
    elapsed = time.perf_counter() - t
    return {
        "packing": real / capacity,
        "bound": ffd_efficiency(lengths, max_len),
        "llmcxr": float(llmcxr_eff),
        "tokens_per_s": real / elapsed,
        "mean_len": float(np.mean(lengths)),
        "dropped": batches.counters.as_dict().get("too_long", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, nargs="+", default=[1024, 2048])
    args = ap.parse_args()

    streams = {
        "phantoms, 64 codes": (phantom_records(800), 64),
        "Open-i-shaped, 64 codes": (openi_records(800, num_codes=64), 64),
        "Open-i-shaped, 256 codes": (openi_records(800), 256),
    }
    corpus = [r["findings"] + " " + r["impression"] for rs, _ in streams.values() for r in rs]
    corpus += [d["instruction"] + " " + d["response"] for d in dolly_records(300)]
    corpus += list(instructions.CXR_TO_REPORT + instructions.REPORT_TO_CXR)
    tok = MultimodalTokenizer.train_bpe(corpus, vocab_size=4000, num_image_codes=N_EMBED)
    print(
        f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores; batch "
        f"{args.batch_size} rows, {args.batches} batches per row of the table\n"
    )
    print(
        "| data | max_len | mean sample | packing (ours) | first-fit-decreasing bound | "
        "LLM-CXR batching | pipeline tokens/s | demo train step tokens/s | ratio |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for max_len in args.max_len:
        consume = train_step_tokens_per_s(tok.vocab_size, args.batch_size, max_len)
        for name, (records, num_codes) in streams.items():
            m = measure(records, num_codes, tok, args.batches, args.batch_size, max_len)
            print(
                f"| {name} | {max_len} | {m['mean_len']:.0f} | {m['packing']:.1%} | "
                f"{m['bound']:.1%} | {m['llmcxr']:.1%} | {m['tokens_per_s']:,.0f} | "
                f"{consume:,.0f} | {m['tokens_per_s'] / consume:.0f}x |",
                flush=True,
            )


if __name__ == "__main__":
    with recorded("pipeline"):
        main()
