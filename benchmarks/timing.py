"""What every benchmark here shares: median wall time of repeated runs after a warm-up, and
the record of each run in `benchmarks/results/<name>.md`."""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def seconds(fn: Callable[[], object], reps: int, *, warmup: bool = True) -> list[float]:
    """Wall times of `reps` calls of `fn` (after one untimed call: compilation, caches)."""
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def median_seconds(fn: Callable[[], object], reps: int, *, warmup: bool = True) -> float:
    """Median wall time of `reps` calls of `fn` (after one untimed call)."""
    return statistics.median(seconds(fn, reps, warmup=warmup))


def bench_gpt_neox_config(layers: int = 6, vocab_size: int = 51305):
    """The benchmarks' GPT-NeoX: hidden 512, 8 heads, MLP 2048, dolly's rotary 0.25."""
    import transformers

    return transformers.GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=512,
        num_hidden_layers=layers,
        num_attention_heads=8,
        intermediate_size=2048,
        rotary_pct=0.25,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=0,
    )


RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU as the kernel names it: benchmark figures mean little without it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    """The source tree's commit (with `+dirty` for uncommitted changes); where the tree has no
    git (a copy on a device machine) $LLMCXR_COMMIT names it, else `unknown`."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("LLMCXR_COMMIT", "unknown")


class _Tee(io.TextIOBase):
    def __init__(self, stream: TextIO) -> None:
        self.stream, self.buffer = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.buffer.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def recorded(name: str, argv: list[str] | None = None, results: Path | None = None):
    """Print as usual, and append the run (date, CPU, cores, commit, command, everything
    printed) to `benchmarks/results/<name>.md`, so the record is written by the benchmark
    itself, never by hand. The file is rewritten through a temporary name. A run that fails
    is not recorded."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield
    results = results or RESULTS
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.md"
    head = path.read_text(encoding="utf-8") if path.exists() else f"# {name}: runs\n"
    args = " ".join(argv if argv is not None else sys.argv[1:])
    entry = (
        f"\n## {datetime.date.today().isoformat()} · {cpu_model()} · {os.cpu_count()} cores · "
        f"commit {commit()}\n\n`python benchmarks/{name}.py {args}`".rstrip()
        + "\n\n"
        + tee.buffer.getvalue().strip()
        + "\n"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(head.rstrip("\n") + "\n" + entry, encoding="utf-8")
    os.replace(tmp, path)
