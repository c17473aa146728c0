"""The `llmcxr-jax` command: one console script, a subcommand per job.

Bad input is the user's to fix and gets one line: `llmcxr-jax COMMAND: error: MESSAGE` on
stderr and exit status 2, where MESSAGE names the input and the reason. That line is made in
one place, `main`, from exactly `llmcxr_jax.errors.InputError`; any other exception is a bug
and keeps its traceback. Argument values are checked by argparse (same status, same shape of
line). Batches (`generate`) report each bad item as `error: ITEM: REASON`, complete the good
ones and exit 1. docs/bad-inputs.md lists what each kind of bad input gives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmcxr_jax.distributed import ENV_COORDINATOR  # imports no JAX
from llmcxr_jax.errors import (  # imports nothing
    InputError,
    MissingInputError,
    OutputExistsError,
    positive_int,
)
from llmcxr_jax.sharding import request_host_devices  # imports no JAX: usable before it starts

# Hints in library messages name the Python API; from the command line, name the flags.
CLI_HINTS = (
    ("(pass tokenizer=...)", "(pass --tokenizer DIR)"),
    ("(use Sampler.argmax() for greedy)", "(use --greedy for greedy decoding)"),
    ("(Generator.load(..., vqgan=...))", "(pass --vqgan DIR)"),
    ("(pass allow_upscale=True to upscale)", "(pass --allow-upscale to upscale)"),
    ("(pass overwrite to replace it)", "(pass --overwrite to replace it)"),
)


def cli_words(message: str) -> str:
    """A library message as the command line says it: on one line, flags for API hints."""
    text = " ".join(str(message).split())
    for api, flag in CLI_HINTS:
        text = text.replace(api, flag)
    return text


class _LineTracker:
    """stderr, remembering whether the last thing written ended a line.

    tqdm draws its bars with `\r` and, closing a bar with leave=False, erases it without a
    newline: an `error:` line written next would sit on the bar's line, and `grep '^error:'`
    on a redirected stderr would miss it. `error_line` starts a new line first when needed.
    """

    def __init__(self, stream: Any):
        self.stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, ...
        return getattr(self.stream, name)


def error_line(text: str) -> None:
    """Write `text` as one whole line of stderr, at the start of a line."""
    err = sys.stderr
    if isinstance(err, _LineTracker) and not err.at_line_start:
        err.write("\n")
    print(cli_words(text), file=err, flush=True)


class _CommandLineFormat(logging.Formatter):
    """Library messages as the command line shows them: INFO as is, WARNING and above
    prefixed with their level (`warning: ...`), flag names for API hints."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno < logging.WARNING:
            return record.getMessage()
        return f"{record.levelname.lower()}: {cli_words(record.getMessage())}"


@contextlib.contextmanager
def library_messages(stream: Any, level: int = logging.INFO) -> Iterator[None]:
    """Route the `llmcxr_jax` loggers to `stream` for one command, then undo it.

    The library only logs (it never prints and never configures logging); a notebook sees the
    same messages after `logging.basicConfig(level=logging.INFO)`.
    """
    logger = logging.getLogger("llmcxr_jax")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_CommandLineFormat())
    old = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # one copy of each line, also where the root logger has handlers
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]


# --- argument types: a bad value is argparse's one-line error, exit status 2 ---------------


def positive_int_arg(text: str) -> int:
    try:
        return positive_int(int(text), "value")
    except (ValueError, InputError):
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None


def non_negative_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _number(text: str, ok: Callable[[float], bool], rule: str, hint: str = "") -> float:
    """`text` as a float that satisfies `ok`, or argparse's one-line error naming `rule`."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not ok(value):  # NaN fails every comparison
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}{hint}")
    return value


def probability_arg(text: str) -> float:
    return _number(text, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


def positive_float_arg(text: str) -> float:
    return _number(text, lambda v: 0.0 < v < float("inf"), "a number > 0")


def non_negative_float_arg(text: str) -> float:
    return _number(text, lambda v: 0.0 <= v < float("inf"), "a number >= 0")


def mesh_arg(text: str) -> tuple[int, int, int]:
    try:
        mesh = tuple(positive_int(int(x), "size") for x in text.split(","))
    except (ValueError, InputError):
        mesh = ()
    if len(mesh) != 3:
        raise argparse.ArgumentTypeError(
            f"must be three positive integers DATA,FSDP,TENSOR, got {text!r}"
        )
    return mesh  # type: ignore[return-value]


def temperature_arg(text: str) -> float:
    return _number(
        text, lambda v: 0.0 < v < float("inf"), "a number > 0", " (--greedy decodes greedily)"
    )


# --- outputs: refused when present unless --overwrite, written under a temporary name -------


def refuse_existing(path: Path, overwrite: bool, *, what: str = "--out") -> None:
    """An OutputExistsError unless `path` is absent, an empty directory, or `overwrite`."""
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return
    kind = "a non-empty directory" if path.is_dir() else "a file"
    raise OutputExistsError(f"{what} {path}: is {kind} already (pass --overwrite to replace it)")


def _temporary_name(final: Path) -> Path:
    """A hidden name beside `final` (same file system: the rename is atomic)."""
    return final.with_name(f".{final.stem}-tmp{os.getpid()}{final.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def written_as(*finals: Path) -> Iterator[list[Path]]:
    """Temporary paths for `finals`; renamed onto them (replacing what is there) only when the
    block completes, removed when it fails: an interrupted write leaves no half output."""
    temps = [_temporary_name(f) for f in finals]
    for t in temps:
        _remove(t)
    try:
        yield temps
    except BaseException:
        for t in temps:
            _remove(t)
        raise
    for t, f in zip(temps, finals, strict=True):
        old = None
        if f.is_dir() and not f.is_symlink():  # a directory cannot be renamed over: move it
            old = f.with_name(f".{f.name}-old{os.getpid()}")
            f.replace(old)
        elif t.is_dir() and (f.exists() or f.is_symlink()):
            f.unlink()
        t.replace(f)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _local(path: str) -> bool:
    return "://" not in path  # gs://... is written by Orbax's own file system layer


def _save_checkpoint(out: str, config: Any, params: Any, overwrite: bool) -> None:
    """A model checkpoint at `out`, written under a temporary name and renamed."""
    from llmcxr_jax import checkpoint

    if not _local(out):
        checkpoint.save_params(out, config, params, overwrite=overwrite)
        return
    with written_as(Path(out)) as (tmp,):
        checkpoint.save_params(tmp, config, params, overwrite=True)


# the count fields of a Hugging Face GPT-NeoX config.json (max_position_embeddings optional)
HF_COUNT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)


def check_hf_config(hf_dir: Path) -> None:
    """config.json of a Hugging Face directory: a JSON object whose counts are positive
    integers, or an InputError naming the file and the field (before any weight is read)."""
    f = hf_dir / "config.json"
    if not hf_dir.is_dir():
        raise MissingInputError(f"--hf-dir {hf_dir}: no such directory")
    if not f.is_file():
        raise MissingInputError(f"{f}: no such file (a Hugging Face model directory has one)")
    try:
        hf = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{f}: unreadable JSON ({e})") from e
    if not isinstance(hf, dict):
        raise InputError(f"{f}: holds a JSON {type(hf).__name__}, expected an object of fields")
    for field in HF_COUNT_FIELDS:
        if field in hf:
            positive_int(hf[field], f"{f}: {field}")
        elif field != "max_position_embeddings":
            raise InputError(f"{f}: missing field {field!r}")
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    if hidden % heads:
        raise InputError(
            f"{f}: hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        )


def _import_hf(args: argparse.Namespace) -> None:
    if _local(args.out):
        refuse_existing(Path(args.out), args.overwrite)
    check_hf_config(Path(args.hf_dir))
    from llmcxr_jax.convert import hf_gpt_neox
    from llmcxr_jax.models.gpt_neox import resize_vocab_params

    config, params = hf_gpt_neox.import_hf(
        args.hf_dir,
        vocab_pad_multiple=args.vocab_pad_multiple,
        param_dtype=args.param_dtype,
        progress=True,
    )
    note = ""
    if args.vocab_size and args.vocab_size < config.vocab_size:
        raise InputError(
            f"--vocab-size {args.vocab_size}: smaller than {args.hf_dir}'s {config.vocab_size} "
            "tokens (it can only grow the vocabulary)"
        )
    if args.vocab_size and args.vocab_size != config.vocab_size:
        old = config.vocab_size
        config, params = resize_vocab_params(
            config, params, args.vocab_size, pad_multiple=args.vocab_pad_multiple, rng=args.seed
        )
        note = f", vocabulary grown {old} -> {config.vocab_size} (new rows N(0, 0.02))"
    _save_checkpoint(args.out, config, params, args.overwrite)
    print(
        f"import-hf: {args.hf_dir} -> {args.out}: {config.num_params() / 1e9:.3f} B parameters"
        f", tables padded to {config.padded_vocab_size} rows{note}"
    )


def _export_hf(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint
    from llmcxr_jax.convert import hf_gpt_neox
    from llmcxr_jax.models.gpt_neox import params_of

    out = Path(args.out)
    refuse_existing(out, args.overwrite)
    model = checkpoint.load_model(args.checkpoint)
    with written_as(out) as (tmp,):
        hf_gpt_neox.export_hf(model.config, params_of(model), tmp, dtype=args.dtype)
    print(f"export-hf: {args.checkpoint} -> {out} ({model.config.vocab_size} tokens, {args.dtype})")


def _import_taming(args: argparse.Namespace) -> None:
    if _local(args.out):
        refuse_existing(Path(args.out), args.overwrite)
    for flag, path in (("--ckpt", args.ckpt), ("--config", args.config)):
        if not Path(path).is_file():
            raise MissingInputError(f"{flag} {path}: no such file")
    from llmcxr_jax.convert import taming

    config, params, skipped = taming.import_taming(args.ckpt, args.config)
    _save_checkpoint(args.out, config, params, args.overwrite)
    note = ""
    if skipped:
        note = (
            f"; ignored {len(skipped)} loss.* tensors (LPIPS and discriminator: "
            "train-vqgan --config.init.taming_ckpt ports them)"
        )
    print(
        f"import-taming: {args.ckpt} -> {args.out}: {config.resolution}px, "
        f"{config.num_codes} codes per image, codebook {config.n_embed}x{config.embed_dim}{note}"
    )


def _export_taming(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint
    from llmcxr_jax.convert import taming
    from llmcxr_jax.models import common

    ckpt = Path(args.out)
    yml = ckpt.with_suffix(".yaml")  # where taming.export_taming puts the config
    if ckpt.is_dir():
        raise InputError(f"--out {ckpt}: is a directory; give the .ckpt file to write")
    refuse_existing(ckpt, args.overwrite)
    refuse_existing(yml, args.overwrite, what="--out's config")
    model = checkpoint.load_model(args.checkpoint, expect="vqgan")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with written_as(ckpt, yml) as (tmp, _):
        taming.export_taming(model.config, common.variables_of(model), tmp)
    print(f"export-taming: {args.checkpoint} -> {ckpt} and {yml}")


def _encode_images(args: argparse.Namespace) -> None:
    from llmcxr_jax import checkpoint, encode
    from llmcxr_jax.data import image_sources

    model = checkpoint.load_model(args.checkpoint, expect="vqgan")
    source = image_sources.make_source(args.source, model.config.resolution)
    report = encode.encode_dataset(
        model,
        source,
        args.out,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        provenance={"checkpoint": str(args.checkpoint), "source": args.source},
    )
    print(
        f"encode-images: {report.records} images encoded into {args.out} "
        f"({report.shards_written} shards written, {report.shards_skipped} already done)"
        + (
            f"; {report.errors} unreadable, listed in {args.out}/errors-*.jsonl"
            if report.errors
            else ""
        )
    )


def _local_hosts(args: argparse.Namespace) -> None:
    """COMMAND run as N local JAX processes ("hosts") joined into one job; exit 1 with one
    line when a host fails (the others are stopped within the heartbeat timeout)."""
    from llmcxr_jax import distributed

    command = list(args.job)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise InputError("local-hosts: give the command to run, e.g. -- train --config ...")
    if command[0] == "local-hosts":
        raise InputError("local-hosts: the command cannot be local-hosts itself")
    hosts = distributed.LocalHosts(
        command,
        hosts=args.hosts,
        devices_per_host=args.devices_per_host,
        heartbeat_timeout_s=args.heartbeat_timeout,
    )
    with hosts, distributed.forwarded_signals(hosts):
        exits = hosts.wait()
    problem = distributed.summarize(exits, args.heartbeat_timeout)
    if problem:
        error_line(f"llmcxr-jax local-hosts: error: {problem}")
        raise SystemExit(1)


def _train_vqgan(args: argparse.Namespace) -> None:
    from llmcxr_jax import configs
    from llmcxr_jax.train import vqgan

    config = configs.load(args.config, args.overrides)
    metrics = vqgan.train(config, args.workdir)
    print(f"train-vqgan: {args.workdir}: {vqgan.summary(metrics)}")


def _train(args: argparse.Namespace) -> None:
    from llmcxr_jax import configs
    from llmcxr_jax.train import lm

    config = configs.load(args.config, args.overrides)
    metrics = lm.train(config, args.workdir)
    shown = {k: round(v, 4) for k, v in metrics.items() if k in ("loss_avg", "eval_loss", "step")}
    print(f"train: {args.workdir}: {shown}")


def _plan(args: argparse.Namespace) -> None:
    import math

    meshes = list(args.mesh or [])
    ladder = [(1, c, 1) for c in (1, 2, 4, 8)]  # FSDP over 1..8 chips: where does it start to fit?
    meshes = list(dict.fromkeys(meshes + ladder))
    request_host_devices(max(math.prod(m) for m in meshes))
    from llmcxr_jax import configs
    from llmcxr_jax.train import plan

    config = configs.load(args.config, args.overrides)
    plans = []
    for m in meshes:
        p = plan.plan(config, m)
        hand_p, hand_o = plan.hand_bytes(config, m)
        for what, got, want in (
            ("parameter", p.params_bytes, hand_p),
            ("optimizer", p.opt_bytes, hand_o),
        ):
            if abs(got - want) > 0.01 * want:
                print(f"warning: {what} bytes {got:.3e} differ from the hand count {want:.3e}")
        plans.append(p)
    print(
        f"plan: {config.model}, max_len {config.data.max_len}, global batch "
        f"{config.data.batch_size}, remat {config.model_overrides.get('remat_policy')}, "
        f"micro-batches {config.loss.micro_batches}; XLA memory analysis per chip "
        f"(compiled for {jax_backend()})\n"
    )
    print(plan.format_plan(plans, args.hbm_gib))
    fitting = [p for p in plans if p.fits(args.hbm_gib)]
    too_big = [p.mesh for p in plans if not p.fits(args.hbm_gib)]
    if too_big:
        print(f"\ndo not fit {args.hbm_gib:.0f} GiB: {', '.join(map(str, too_big))}")
    if fitting:
        best = min(fitting, key=lambda p: (math.prod(p.mesh), p.total_bytes))
        print(
            f"smallest fitting mesh: {best.mesh} ({math.prod(best.mesh)} chips, "
            f"{best.total_bytes / plan.GIB:.1f} GiB per chip)"
        )
    else:
        print("nothing fits: raise micro_batches, use remat_policy=full, or more chips")


def jax_backend() -> str:
    import jax

    return jax.default_backend()


def builder_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """`--builder-kwarg KEY=VALUE` arguments as a dict; a value is a Python literal (number,
    boolean, tuple, ...) where it parses as one, else the plain string."""
    import ast

    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise InputError(f"--builder-kwarg {item!r}: not of the form KEY=VALUE")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


@contextlib.contextmanager
def new_paths_removed_on_failure(root: Path) -> Iterator[None]:
    """If the block fails, remove what it created under `root` (paths that were not there
    before; `root` itself and its parent directories when it made them), so that a refused or
    failed data set leaves nothing behind and a data set prepared before stays as it was."""
    before = set(root.rglob("*")) if root.is_dir() else None
    made: list[Path] = []  # root and the parents the block may create, innermost first
    p = root
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        if before is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for q in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):
                if q not in before:
                    _remove(q)
        for q in made[1:]:
            with contextlib.suppress(OSError):
                q.rmdir()  # only when empty
        raise


def _prepare_data(args: argparse.Namespace) -> None:
    # inputs first: TFDS would otherwise create directories before finding them missing
    for flag, path in (("--manual-dir", args.manual_dir), ("--codes-dir", args.codes_dir)):
        if path and not Path(path).is_dir():
            raise MissingInputError(f"{flag} {path}: no such directory")
    if args.manual_dir and not any(Path(args.manual_dir).iterdir()):
        raise InputError(
            f"--manual-dir {args.manual_dir}: is empty; put the downloaded files there"
        )
    data_dir = Path(args.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir}: exists and is not a directory")
    kwargs = builder_kwargs(args.builder_kwarg)
    if args.codes_dir:
        kwargs["codes_dir"] = args.codes_dir
    import tensorflow_datasets as tfds

    import llmcxr_jax.data.tfds as builders
    from llmcxr_jax.data.records import tfds_builder

    builder = tfds_builder(args.builder, args.data_dir, **kwargs)
    config = tfds.download.DownloadConfig(manual_dir=args.manual_dir) if args.manual_dir else None
    with new_paths_removed_on_failure(data_dir):
        builder.download_and_prepare(download_config=config)
    counts = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
    print(
        f"prepare-data: {args.builder} in {builder.data_dir}: {counts}; "
        f"skipped {builders.skip_counts(builder)}"
    )


def read_codes(path: str) -> np.ndarray:
    """`--codes FILE.npy`: an integer array [N, h*w], never unpickled."""
    try:
        codes = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MissingInputError(f"--codes {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"--codes {path}: is a directory, not a .npy file") from None
    except (OSError, ValueError, EOFError) as e:  # not .npy, truncated, or pickled objects
        raise InputError(f"--codes {path}: not a readable .npy array ({cli_words(e)})") from e
    if not isinstance(codes, np.ndarray):  # an .npz archive
        raise InputError(f"--codes {path}: an .npz archive; give one .npy array [N, h*w]")
    if codes.ndim != 2 or not len(codes):
        raise InputError(
            f"--codes {path}: an array of shape {codes.shape}; expected [N, h*w] with N >= 1 "
            "(one row of codes per image)"
        )
    if not np.issubdtype(codes.dtype, np.integer):
        raise InputError(f"--codes {path}: {codes.dtype} values; codes are integers")
    return codes


def read_reports(args: argparse.Namespace) -> list[str]:
    """The texts of `--report` and `--reports-file` (one per line)."""
    reports = list(args.report or [])
    if args.reports_file:
        path = Path(args.reports_file)
        try:
            reports += path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise MissingInputError(f"--reports-file {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--reports-file {path}: unreadable ({cli_words(e)})") from e
    if not reports:
        raise InputError("no reports: give --report TEXT (repeatable) or --reports-file FILE")
    return reports


def _write_text(path: Path, text: str) -> None:
    with written_as(path) as (tmp,):
        tmp.write_text(text, encoding="utf-8")


def _generate(args: argparse.Namespace) -> None:
    """One line per result on stdout, one `error: ITEM: PROBLEM` line per bad input on stderr
    (the first problem found with it: an unreadable image is not also "wrong codes"); the good
    inputs complete, and the exit status is 1 when any failed. Arguments that stop the whole
    command (a missing checkpoint, no inputs) are InputErrors: one line, status 2."""
    from llmcxr_jax import decode
    from llmcxr_jax.generate import Failure, Generator, Results

    # Everything that can be checked without the model is checked before loading it.
    out = Path(args.out) if args.out else None
    if out and out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    reports: list[str] = []
    codes = None
    if args.task == "image":
        reports = read_reports(args)
    elif args.codes and args.images:
        raise InputError("give --images FILE... or --codes FILE.npy, not both")
    elif args.codes:
        codes = read_codes(args.codes)
    elif not args.images:
        raise InputError(f"generate {args.task}: give --images FILE... or --codes FILE.npy")
    elif not args.vqgan:
        raise InputError("--images: image files need --vqgan DIR (the VQ-GAN that encodes them)")
    questions: list[str] = list(args.question or [])
    if args.task == "vqa":
        n = len(codes) if codes is not None else len(args.images)
        if len(questions) == 1:
            questions *= n
        if len(questions) != n:
            raise InputError(
                f"{len(questions)} --question for {n} images: give one question, or one per image"
            )

    gen = Generator.load(
        args.checkpoint,
        args.vqgan,
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
        quantize=args.quantize,
    )
    if args.greedy:
        sampler = decode.GREEDY
    else:
        sampler = decode.Sampler(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if codes is not None and codes.shape[1] != gen.num_codes:
        raise InputError(
            f"--codes {args.codes}: rows of {codes.shape[1]} codes; this model's images have "
            f"{gen.num_codes}"
        )
    from llmcxr_jax import distributed

    if not distributed.is_primary():  # several hosts share the work; host 0 writes it out
        out = None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    common = dict(seed=args.seed, progress=True)
    if args.task == "image":
        names = [f"report {i}" for i in range(len(reports))]
        res = gen.images(reports, sampler=sampler, names=names, **common)
        good = res.ok
        if out and good:
            with written_as(out / "codes.npy") as (tmp,), open(tmp, "wb") as f:
                np.save(f, np.stack([res.values[i] for i in good]))
        if out and good and gen.vqgan is not None:
            from llmcxr_jax.data.images import save_png

            pixels = gen.decode(np.stack([res.values[i] for i in good]))
            for j, i in enumerate(good):
                with written_as(out / f"image_{i:04d}.png") as (tmp,):
                    save_png(pixels[j], tmp)
        for i, r in enumerate(reports):
            png = str(out / f"image_{i:04d}.png") if out and i in good else None
            rows.append({"input": r, "png": png})
    else:
        enc: Results | None = None
        if codes is not None:
            values: list[Any] = list(codes)
            names = [f"{args.codes}[{i}]" for i in range(len(codes))]
        else:
            enc = gen.encode_files(args.images, allow_upscale=args.allow_upscale)
            values, names = enc.values, [str(p) for p in args.images]
        if args.task == "report":
            res = gen.reports(
                values,
                sampler=sampler,
                names=names,
                num_samples=args.num_samples,
                max_new_tokens=args.max_new_tokens,
                **common,
            )
            key = "report"
        else:
            res = gen.answers(
                values,
                questions,
                sampler=sampler,
                names=names,
                max_new_tokens=min(args.max_new_tokens, 48),
                **common,
            )
            key = "answer"
        if enc is not None:  # an image that could not be read keeps that reason, not "no codes"
            unread = {f.index for f in enc.failures}
            later = [f for f in res.failures if f.index not in unread]
            res.failures = sorted(enc.failures + later, key=lambda f: f.index)
        for i, name in enumerate(names):
            rows.append({"input": name, key: res.values[i]})
            if args.task == "vqa":
                rows[-1]["question"] = questions[i]
    failed: dict[int, Failure] = {}
    for f in res.failures:
        failed.setdefault(f.index, f)
    for i, row in enumerate(rows):
        if not distributed.is_primary():
            continue
        if i in failed:
            row["error"] = cli_words(failed[i].message)
            error_line(f"error: {failed[i]}")
        elif args.task == "image":
            print(f"{row['input']!r} -> {row['png'] or 'codes'}")
        elif args.task == "report":
            print(f"{row['input']}: {row['report']}")
        else:
            print(f"{row['input']}: {row['question']} -> {row['answer']}")
    if out:
        name = {"report": "reports", "image": "images", "vqa": "answers"}[args.task]
        lines = "".join(json.dumps(row, default=_jsonable) + "\n" for row in rows)
        _write_text(out / f"{name}.jsonl", lines)
    if failed:
        error_line(f"llmcxr-jax generate: {len(failed)} of {len(rows)} inputs failed")
        raise SystemExit(1)


def _jsonable(x: Any) -> Any:
    return x.tolist() if isinstance(x, np.ndarray) else str(x)


def _demo(args: argparse.Namespace) -> None:
    import os

    # One CPU device per core: the convolutional steps then run data parallel over the cores
    # (XLA's CPU client keeps most of one program's convolution work on one thread).
    request_host_devices(min(len(os.sched_getaffinity(0)), 8), keep_users=True)
    from llmcxr_jax import demo

    config = demo._config(args.config, *args.overrides)
    if args.minutes:
        config.minutes = float(args.minutes)
    demo.run(args.out, config, progress=not args.no_progress)


def _evaluate(args: argparse.Namespace) -> None:
    import ml_collections

    from llmcxr_jax import checkpoint, decode
    from llmcxr_jax.data.records import open_records
    from llmcxr_jax.eval import evaluate as evaluation
    from llmcxr_jax.eval import film_metrics, report_models
    from llmcxr_jax.generate import Generator

    # weights files first: a bad --xrv-weights or report-metric file fails before the slow loads
    xrv = film_metrics.load_xrv(args.xrv_weights) if args.xrv_weights else None
    scorers = report_models.load_report_models(
        chexbert=args.chexbert,
        bert_tokenizer=args.bert_tokenizer,
        radgraph=args.radgraph,
        bertscore_model=args.bertscore_model,
        bertscore_layer=args.bertscore_layer,
        bertscore_baseline=args.bertscore_baseline,
        chexbert_uncertain_positive=args.chexbert_uncertain == "positive",
    )
    gen = Generator.load(
        args.checkpoint,
        args.vqgan,
        tokenizer=args.tokenizer,
        batch_size=args.batch_size,
        quantize=args.quantize,
    )
    clf = checkpoint.load_model(args.classifier, expect="densenet") if args.classifier else None
    name, _, variant = args.dataset.partition("/")
    data = ml_collections.ConfigDict(
        {
            "builder": name,
            "builder_config": variant,
            "data_dir": args.data_dir,
            "builder_kwargs": builder_kwargs(args.builder_kwarg),
        }
    )
    records = open_records(data, args.split)
    evaluation.evaluate(
        gen,
        records,
        args.out,
        classifier=clf,
        stage=args.stage,
        num_reports=args.num_reports,
        num_images=args.num_images,
        sampler=decode.Sampler(top_p=args.top_p),
        seed=args.seed,
        max_items=args.max_items,
        vqa_questions=args.vqa_questions,
        max_report_tokens=args.max_new_tokens,
        uncertain_positive=args.uncertain_positive,
        bootstrap=args.bootstrap,
        probability_score=not args.no_probability_score,
        xrv_model=xrv,
        diversity_films=args.diversity_films,
        report_scorers=scorers,
    )
    print(Path(args.out, "results.md").read_text())
    print(f"evaluate: results.json, results.md, samples.png, items.csv, films/ in {args.out}")


def _serve(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("llmcxr_jax").setLevel(logging.INFO)  # start-up timings, not Orbax's chatter
    from llmcxr_jax import serve

    serve.compile_cache(None if args.no_compile_cache else serve.default_compile_cache())
    server = serve.start(
        args.checkpoint,
        args.vqgan,
        tokenizer=args.tokenizer,
        host=args.host,
        port=args.port,
        max_new_tokens=args.max_new_tokens,
        allow_upscale=args.allow_upscale,
        max_queue=args.max_queue,
        quantize=args.quantize,
    )
    print(f"serve: {server.url} (Ctrl-C stops it)", flush=True)
    server.block()


def _add_quantize(p: argparse.ArgumentParser) -> None:
    """`--quantize`, for every command that runs the LM (generate, serve, evaluate)."""
    p.add_argument(
        "--quantize",
        choices=["int8"],  # generate.QUANTIZE (not imported here: it starts JAX)
        help="int8: run the LM on the CPU with int8 weights (PyTorch's fbgemm; needs torch)",
    )


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
        type=non_negative_int_arg,
        default=0,
        help="grow the vocabulary to this many tokens (LLM-CXR: 51305)",
    )
    p.add_argument(
        "--vocab-pad-multiple",
        type=positive_int_arg,
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
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_export_hf)

    p = sub.add_parser("import-taming", help="VQ-GAN weights from a taming-transformers .ckpt")
    p.add_argument("--ckpt", required=True, help="taming / Lightning checkpoint (.ckpt)")
    p.add_argument("--config", required=True, help="taming's YAML config for it")
    p.add_argument("--out", required=True, help="model checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_import_taming)

    p = sub.add_parser("export-taming", help="VQ-GAN weights to a taming-transformers .ckpt")
    p.add_argument("--checkpoint", required=True, help="VQ-GAN model checkpoint directory")
    p.add_argument("--out", required=True, help=".ckpt file to write (a .yaml goes beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_export_taming)

    p = sub.add_parser(
        "local-hosts",
        help="rehearse a pod launch: run a command as N local JAX processes (hosts)",
        description="Run COMMAND as --hosts processes on this machine, each a JAX host with "
        "--devices-per-host CPU devices, joined through a coordinator on 127.0.0.1 (collectives "
        "over gloo): the multi-host path of a TPU pod (per-host data shards, one Orbax "
        "checkpoint written by all, preemption agreed by all), run on one machine. Output lines "
        "are prefixed [host i]; SIGTERM / Ctrl-C reach every host.",
    )
    p.add_argument("--hosts", type=positive_int_arg, default=2, help="processes (default 2)")
    p.add_argument("--devices-per-host", type=positive_int_arg, default=2, help="(default 2)")
    p.add_argument(
        "--heartbeat-timeout",
        type=positive_int_arg,
        default=30,
        help="seconds a silent host is waited for before the job stops (default 30)",
    )
    p.add_argument("job", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    p.set_defaults(func=_local_hosts)

    p = sub.add_parser("encode-images", help="pre-tokenise a data set's images into codes")
    p.add_argument("--checkpoint", required=True, help="VQ-GAN model checkpoint directory")
    p.add_argument("--source", required=True, help="folder:DIR or synthetic:N")
    p.add_argument("--out", required=True, help="directory for the code shards")
    p.add_argument("--batch-size", type=positive_int_arg, default=16)
    p.add_argument("--shard-size", type=positive_int_arg, default=1024)
    p.set_defaults(func=_encode_images)

    p = sub.add_parser(
        "train-vqgan",
        help="train (or resume) a VQ-GAN with the clinical-information-preserving loss",
        description="Extra --config.key=value arguments override fields of the config file.",
    )
    p.add_argument("--config", required=True, help="configs/vqgan_*.py[:arg]")
    p.add_argument("--workdir", required=True, help="where checkpoints, metrics and samples go")
    p.set_defaults(func=_train_vqgan, takes_overrides=True)

    p = sub.add_parser(
        "train",
        help="LM finetuning (stage 1 or 2 by config); resumes from --workdir",
        description="Extra --config.key=value arguments override fields of the config file.",
    )
    p.add_argument("--config", required=True, help="configs/llmcxr_stage1.py, ..., demo.py")
    p.add_argument("--workdir", required=True)
    p.set_defaults(func=_train, takes_overrides=True)

    p = sub.add_parser(
        "plan",
        help="compile the real-size train step on fake devices: memory per chip, FLOPs",
        description="Extra --config.key=value arguments override fields of the config file.",
    )
    p.add_argument("--config", required=True)
    p.add_argument(
        "--mesh",
        action="append",
        type=mesh_arg,
        metavar="DATA,FSDP,TENSOR",
        help="mesh shapes to try (repeatable); FSDP over 1-8 chips is always tried",
    )
    p.add_argument(
        "--hbm-gib", type=positive_float_arg, default=32.0, help="memory per chip (TPU v4: 32)"
    )
    p.set_defaults(func=_plan, takes_overrides=True)

    p = sub.add_parser("generate", help="reports from CXRs, CXRs from reports, VQA answers")
    _add_quantize(p)
    p.add_argument("task", choices=["report", "image", "vqa"])
    p.add_argument("--checkpoint", required=True, help="LM checkpoint (or training workdir)")
    p.add_argument("--vqgan", help="VQ-GAN checkpoint: needed for image files and PNG output")
    p.add_argument("--tokenizer", help="tokenizer dir (default: CHECKPOINT/tokenizer)")
    p.add_argument("--images", nargs="+", help="JPEG/PNG/DICOM files (report, vqa)")
    p.add_argument("--codes", help=".npy int array [N, h*w] of pre-computed codes (report, vqa)")
    p.add_argument("--allow-upscale", action="store_true", help="upscale small images")
    p.add_argument("--report", action="append", help="report text (image; repeatable)")
    p.add_argument("--reports-file", help="one report per line (image)")
    p.add_argument("--question", action="append", help="question (vqa; one, or one per image)")
    p.add_argument("--out", help="directory for PNGs, codes.npy and a JSONL of the results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="greedy instead of sampling")
    p.add_argument(
        "--top-p", type=probability_arg, default=0.92, help="nucleus mass (LLM-CXR: 0.92)"
    )
    p.add_argument("--top-k", type=non_negative_int_arg, default=0, help="0: off")
    p.add_argument("--temperature", type=temperature_arg, default=1.0)
    p.add_argument(
        "--num-samples", type=positive_int_arg, default=1, help="reports per image (report)"
    )
    p.add_argument("--max-new-tokens", type=positive_int_arg, default=256, help="text length cap")
    p.add_argument("--batch-size", type=positive_int_arg, default=16)
    p.set_defaults(func=_generate)

    p = sub.add_parser("serve", help="the three tasks in a browser (a Gradio app)")
    _add_quantize(p)
    p.add_argument("--checkpoint", required=True, help="LM checkpoint (or training workdir)")
    p.add_argument("--vqgan", required=True, help="VQ-GAN checkpoint (or training workdir)")
    p.add_argument("--tokenizer", help="tokenizer dir (default: CHECKPOINT/tokenizer)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every one)")
    p.add_argument("--port", type=positive_int_arg, default=7860, help="the page's port")
    p.add_argument("--max-new-tokens", type=positive_int_arg, default=256, help="report cap")
    p.add_argument("--max-queue", type=positive_int_arg, default=16, help="requests waiting")
    p.add_argument("--allow-upscale", action="store_true", help="upscale small films")
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not keep compiled programs in ~/.cache/llmcxr_jax/xla (restarts compile again)",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("evaluate", help="the paper's evaluation tables for a checkpoint")
    _add_quantize(p)
    p.add_argument("--checkpoint", required=True, help="LM checkpoint (or training workdir)")
    p.add_argument("--vqgan", help="VQ-GAN checkpoint (report-to-CXR needs it)")
    p.add_argument("--classifier", help="CXR classifier checkpoint (report-to-CXR, FID)")
    p.add_argument("--tokenizer", help="tokenizer dir (default: CHECKPOINT/tokenizer)")
    p.add_argument("--dataset", required=True, help="e.g. cxr_phantoms/64, mimic_cxr_jpg/paths")
    p.add_argument("--data-dir", default="", help="TFDS data dir of the prepared data set")
    p.add_argument("--builder-kwarg", action="append", metavar="KEY=VALUE")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--stage", type=int, choices=[1, 2], default=2, help="which report text the model learned"
    )
    p.add_argument(
        "--num-reports", type=positive_int_arg, default=4, help="sampled reports per image"
    )
    p.add_argument(
        "--num-images", type=positive_int_arg, default=1, help="generated films per report"
    )
    p.add_argument(
        "--vqa-questions", type=non_negative_int_arg, default=2, help="per image (0: no VQA)"
    )
    p.add_argument("--uncertain-positive", action="store_true", help="count uncertain as 1")
    p.add_argument("--max-new-tokens", type=positive_int_arg, default=256, help="report length cap")
    p.add_argument("--top-p", type=probability_arg, default=0.92)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-items", type=non_negative_int_arg, default=0, help="0: the whole split")
    p.add_argument(
        "--bootstrap",
        type=non_negative_int_arg,
        default=1000,
        help="resamples for the 95%% intervals (0: none)",
    )
    p.add_argument(
        "--no-probability-score",
        action="store_true",
        help="skip the deterministic p(yes) CXR-to-report score",
    )
    p.add_argument(
        "--xrv-weights",
        help="torchxrayvision DenseNet-121 state dict (docs/evaluation.md) for the xrv-feature FID",
    )
    p.add_argument(
        "--diversity-films",
        type=non_negative_int_arg,
        default=0,
        help="with --num-images 1: a second film for this many reports (film diversity)",
    )
    p.add_argument("--batch-size", type=positive_int_arg, default=32)
    # report metrics from local weights (docs/evaluation.md); each is skipped when not given
    p.add_argument("--chexbert", metavar="FILE", help="CheXbert weights (chexbert.pth)")
    p.add_argument(
        "--bert-tokenizer", metavar="DIR", help="bert-base-uncased tokenizer dir for --chexbert"
    )
    p.add_argument(
        "--chexbert-uncertain",
        choices=["positive", "negative"],
        default="positive",
        help="how F1-CheXbert counts uncertain labels (f1chexbert: positive)",
    )
    p.add_argument("--radgraph", metavar="DIR", help="extracted RadGraph model dir (radgraph pkg)")
    p.add_argument("--bertscore-model", metavar="DIR", help="local model dir for BERTScore")
    p.add_argument(
        "--bertscore-layer",
        type=non_negative_int_arg,
        help="hidden layer for BERTScore (default: bert-score's for the model, else the last)",
    )
    p.add_argument("--bertscore-baseline", metavar="FILE", help="bert-score baseline tsv")
    p.add_argument("--out", required=True, help="directory for the JSON, Markdown and PNG")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("demo", help="the whole recipe on the embedded phantoms, on a CPU")
    p.add_argument("--out", default="demo-out", help="output directory (resumable)")
    p.add_argument("--config", default="demo_run.py", help="configs/ file[:arg]")
    p.add_argument(
        "--minutes",
        type=non_negative_float_arg,
        default=0.0,
        help="scale the recipe to this time budget (0: the 10-minute recipe as configured)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo, takes_overrides=True)

    p = sub.add_parser("prepare-data", help="build a TFDS data set (array_record, no TensorFlow)")
    p.add_argument(
        "--builder",
        required=True,
        help="cxr_phantoms[/64|/256], mimic_cxr_jpg[/paths|/images256], open_i[/...]",
    )
    p.add_argument("--data-dir", required=True, help="where TFDS writes the prepared data")
    p.add_argument("--manual-dir", help="the downloaded files (MIMIC-CXR-JPG tree, NLMCXR tgz)")
    p.add_argument("--codes-dir", help="codes from encode-images, joined by image id")
    p.add_argument(
        "--builder-kwarg",
        action="append",
        metavar="KEY=VALUE",
        help="e.g. train_size=500, reports_dir=/data/mimic-cxr-reports",
    )
    p.set_defaults(func=_prepare_data)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "takes_overrides", False):
        bad = [a for a in extra if not a.startswith("--config.")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], None] = args.func
    stderr = sys.stderr
    sys.stderr = _LineTracker(stderr)
    try:
        with library_messages(sys.stderr):
            if os.environ.get(ENV_COORDINATOR):  # one of several local hosts (`local-hosts`)
                from llmcxr_jax import distributed

                distributed.initialize()
            func(args)
    except InputError as e:
        # Bad input is the user's to fix: one line naming the input and the problem. Any
        # other exception is a bug and keeps its traceback.
        error_line(f"llmcxr-jax {args.command}: error: {e}")
        raise SystemExit(2) from None
    finally:
        if isinstance(sys.stderr, _LineTracker):
            sys.stderr = stderr


if __name__ == "__main__":
    main()
