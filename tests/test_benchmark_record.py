"""Benchmarks write their own record: benchmarks/timing.py `recorded` appends each run."""

import datetime
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import timing  # noqa: E402


def test_each_run_is_appended_with_date_cpu_commit_and_table(tmp_path, capsys):
    for ratio in ("1.07x", "1.10x"):
        with timing.recorded("bench", argv=["--reps", "3"], results=tmp_path):
            print("| impl | s/step | speed-up |\n|---|---|---|")
            print(f"| JAX | 1.0 | {ratio} |")
    text = (tmp_path / "bench.md").read_text()
    assert text.startswith("# bench: runs\n")
    entries = text.split("\n## ")[1:]
    assert len(entries) == 2
    today = datetime.date.today().isoformat()
    for entry, ratio in zip(entries, ("1.07x", "1.10x"), strict=True):
        head = entry.splitlines()[0]
        assert head.startswith(today) and timing.cpu_model() in head
        assert f"commit {timing.commit()}" in head
        assert "`python benchmarks/bench.py --reps 3`" in entry
        assert f"| JAX | 1.0 | {ratio} |" in entry
    # what was printed still reached the terminal
    assert capsys.readouterr().out.count("| JAX | 1.0 |") == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_run_is_not_recorded(tmp_path):
    with pytest.raises(RuntimeError), timing.recorded("bench", argv=[], results=tmp_path):
        print("| half a table |")
        raise RuntimeError("out of memory")
    assert not (tmp_path / "bench.md").exists()
