"""The `llmcxr-jax` command: one console script, a subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _import_hf(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint, vocab
    from llmcxr_jax.convert import hf_gpt_neox

    config, params = hf_gpt_neox.import_hf(
        args.hf_dir,
        vocab_pad_multiple=args.vocab_pad_multiple,
        param_dtype=args.param_dtype,
        progress=True,
    )
    note = ""
    if args.vocab_size and args.vocab_size != config.vocab_size:
        old = config.vocab_size
        config, params = vocab.resize_vocab_params(
            config, params, args.vocab_size, pad_multiple=args.vocab_pad_multiple, rng=args.seed
        )
        note = f", vocabulary grown {old} -> {config.vocab_size} (new rows N(0, 0.02))"
    checkpoint.save_params(args.out, config, params, overwrite=args.overwrite)
    print(
        f"import-hf: {args.hf_dir} -> {args.out}: {config.num_params() / 1e9:.3f} B parameters"
        f", tables padded to {config.padded_vocab_size} rows{note}"
    )


def _export_hf(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint
    from llmcxr_jax.convert import hf_gpt_neox
    from llmcxr_jax.models.gpt_neox import params_of

    model = checkpoint.load_model(args.checkpoint)
    out = hf_gpt_neox.export_hf(model.config, params_of(model), args.out, dtype=args.dtype)
    print(f"export-hf: {args.checkpoint} -> {out} ({model.config.vocab_size} tokens, {args.dtype})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmcxr-jax",
        description="LLM-CXR in JAX: a multimodal chest X-ray LLM trained on TPUs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import-hf", help="GPT-NeoX weights from a Hugging Face directory")
    p.add_argument("--hf-dir", required=True, help="directory with config.json and weights")
    p.add_argument("--out", required=True, help="model checkpoint directory to write")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=0,
        help="grow the vocabulary to this many tokens (LLM-CXR: 51305)",
    )
    p.add_argument(
        "--vocab-pad-multiple",
        type=int,
        default=128,
        help="pad embedding tables to a multiple of this (masked, dropped on export)",
    )
    p.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0, help="seed for new vocabulary rows")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_import_hf)

    p = sub.add_parser("export-hf", help="GPT-NeoX weights to a Hugging Face directory")
    p.add_argument("--checkpoint", required=True, help="model checkpoint directory")
    p.add_argument("--out", required=True, help="directory for config.json + safetensors")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=_export_hf)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (ValueError, FileExistsError, FileNotFoundError, RuntimeError) as e:
        # Bad input is the user's to fix: one line naming the file and the problem.
        print(f"llmcxr-jax {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
