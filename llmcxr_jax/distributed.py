"""One job, several processes: joining a multi-host run, and N local processes as N hosts.

On a Cloud TPU slice larger than v4-8 every host runs the same command. Each process joins the
others with `jax.distributed.initialize()` (the TPU metadata names the coordinator), reads its
own share of the data, and takes part in every collective and every checkpoint.

That path can be rehearsed on one machine: `LocalHosts` (the `llmcxr-jax local-hosts`
command) starts a command N times, each process a "host" with its own CPU devices, joined
through a coordinator on 127.0.0.1 with CPU collectives over gloo. The hosts find the
coordinator through the `LLMCXR_*` variables below, which `initialize` reads; nothing else in
the library knows whether its hosts are TPU VMs or local processes.

What a dead host does to the others is bounded: JAX's coordination service stops every process
once a host has sent no heartbeat for `heartbeat_timeout_s` (the process aborts with "Terminating
process because the JAX distributed service detected fatal errors"), and `LocalHosts` kills
whatever is still running `grace_s` later. A rerun of the same command resumes from the newest
complete checkpoint (Orbax finalises a step only once every host has written its part).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import numpy as np

log = logging.getLogger(__name__)

ENV_COORDINATOR = "LLMCXR_COORDINATOR"  # host:port of process 0's coordination service
ENV_NUM_PROCESSES = "LLMCXR_NUM_PROCESSES"
ENV_PROCESS_ID = "LLMCXR_PROCESS_ID"
ENV_HEARTBEAT_S = "LLMCXR_HEARTBEAT_TIMEOUT_S"

DEFAULT_HEARTBEAT_S = 100  # JAX's default: a TPU host may stall that long in a long compile


def initialize(auto: bool = False) -> bool:
    """Join the job's other processes (once, before JAX computes anything).

    With the `LLMCXR_*` variables set (by `LocalHosts`), join the local coordinator over gloo;
    otherwise, with `auto` (a run config's `distributed=True`), let JAX find the hosts of a TPU
    slice. Returns whether this process is one of several.
    """
    import jax

    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    env = os.environ
    if ENV_COORDINATOR in env:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            env[ENV_COORDINATOR],
            num_processes=int(env[ENV_NUM_PROCESSES]),
            process_id=int(env[ENV_PROCESS_ID]),
            heartbeat_timeout_seconds=int(env.get(ENV_HEARTBEAT_S, DEFAULT_HEARTBEAT_S)),
            initialization_timeout=120,
        )
    elif auto:
        jax.distributed.initialize()
    else:
        return False
    log.info(
        f"host {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} "
        f"local device(s), {jax.device_count()} in all"
    )
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes what one process writes (logs, metrics, JSON files)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (a no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def preemption_requested(step: int) -> bool:
    """Whether all processes are to save at `step` and stop, agreed by all of them.

    A SIGTERM reaching any host is seen by JAX's preemption notifier (installed by
    `jax.distributed.initialize`) and spread through the coordination service; every process
    gets True at the same step. Call it once per step on every process.
    """
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(step))


def from_primary(value: int) -> int:
    """Host 0's `value` on every host (e.g. a step count each host measured for itself)."""
    import jax

    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def allgather_rows(x: Any) -> Any:
    """The rows every process holds, concatenated in process order (each its own part)."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def share_chunks(
    n: int, run: Callable[[int], tuple[np.ndarray, ...]], done: Callable[[int], Any] | None = None
) -> list[tuple[np.ndarray, ...]]:
    """`run(c)` for every c < n, split over the hosts (host i runs i, i+H, ...), and every
    chunk's arrays on every host, in chunk order.

    `run` must return arrays of the same shapes for every chunk, and must not depend on which
    host runs it. A host with fewer chunks than the others repeats chunk 0 so that all gather
    the same shapes. `done(1)` is called after each chunk (a progress bar's update).
    """
    import jax
    from jax.experimental import multihost_utils

    hosts, me = jax.process_count(), jax.process_index()
    rounds = -(-n // hosts)
    mine = []
    for j in range(rounds):
        c = me + j * hosts
        mine.append(run(c if c < n else 0))
        if c < n and done is not None:
            done(1)
    stacked = [np.stack(parts) for parts in zip(*mine, strict=True)]  # [rounds, ...] each
    gathered = [np.asarray(multihost_utils.process_allgather(a)) for a in stacked]
    return [tuple(g[c % hosts, c // hosts] for g in gathered) for c in range(n)]


# --- N local processes as N hosts -----------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_device_count(xla_flags: str, n: int) -> str:
    kept = [f for f in xla_flags.split() if "xla_force_host_platform_device_count" not in f]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={n}"])


@dataclasses.dataclass
class HostExit:
    host: int
    returncode: int
    seconds: float  # after the start

    def describe(self) -> str:
        rc = self.returncode
        how = f"by {signal.Signals(-rc).name}" if rc < 0 else f"with status {rc}"
        return f"host {self.host} exited {how} after {self.seconds:.1f} s"


class LocalHosts:
    """`python -m llmcxr_jax.cli ARGS` run as `hosts` processes joined into one JAX job.

    Each process gets `devices_per_host` CPU devices and the `LLMCXR_*` variables; its output
    lines are prefixed `[host i]`. Use as a context manager: leaving it (also on an exception)
    kills and reaps every process still running. `wait()` returns the exits; once one host
    fails, the others get `grace_s` to stop on their own (JAX stops them after
    `heartbeat_timeout_s`) before they are killed.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        hosts: int = 2,
        devices_per_host: int = 2,
        heartbeat_timeout_s: int = 10,
        grace_s: float | None = None,
        env: dict[str, str] | None = None,
        out: IO[str] | None = None,
    ):
        if hosts < 1 or devices_per_host < 1:
            raise ValueError("hosts and devices_per_host must be positive")
        self.argv = list(argv)
        self.hosts = hosts
        self.devices_per_host = devices_per_host
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.grace_s = heartbeat_timeout_s + 20.0 if grace_s is None else grace_s
        self.env = env
        self.out = out or sys.stdout
        self.procs: list[subprocess.Popen] = []
        self.lines: list[list[str]] = []  # what each host printed
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.t0 = 0.0

    def start(self) -> LocalHosts:
        port = free_port()
        self.t0 = time.time()
        for i in range(self.hosts):
            env = dict(os.environ, **(self.env or {}))
            env.update(
                {
                    ENV_COORDINATOR: f"127.0.0.1:{port}",
                    ENV_NUM_PROCESSES: str(self.hosts),
                    ENV_PROCESS_ID: str(i),
                    ENV_HEARTBEAT_S: str(self.heartbeat_timeout_s),
                    "JAX_PLATFORMS": "cpu",
                    "XLA_FLAGS": _with_device_count(
                        env.get("XLA_FLAGS", ""), self.devices_per_host
                    ),
                    "PYTHONUNBUFFERED": "1",
                }
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "llmcxr_jax.cli", *self.argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                start_new_session=True,  # a Ctrl-C reaches the launcher, which passes it on
            )
            self.procs.append(proc)
            self.lines.append([])
            t = threading.Thread(target=self._pump, args=(i, proc), daemon=True)
            t.start()
            self._threads.append(t)
        log.info(
            f"{self.hosts} local hosts x {self.devices_per_host} CPU devices, coordinator "
            f"127.0.0.1:{port}, pids {[p.pid for p in self.procs]}"
        )
        return self

    def _pump(self, host: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "[Gloo] Rank" in line:  # one per rank and peer: noise
                continue
            with self._lock:
                self.lines[host].append(line)
                self.out.write(f"[host {host}] {line}")
                self.out.flush()

    def output(self, host: int) -> str:
        with self._lock:
            return "".join(self.lines[host])

    def signal(self, host: int, sig: int) -> None:
        """Send `sig` to one host (as a preemption notice or a crash would reach it)."""
        self.procs[host].send_signal(sig)

    def wait(self, timeout_s: float | None = None) -> list[HostExit]:
        """Wait for every host; kill the rest `grace_s` after the first failure, or at
        `timeout_s`. The exits, in the order the hosts ended."""
        exits: dict[int, HostExit] = {}
        failed_at = None
        deadline = None if timeout_s is None else time.time() + timeout_s
        while len(exits) < self.hosts:
            for i, p in enumerate(self.procs):
                if i not in exits and p.poll() is not None:
                    exits[i] = HostExit(i, p.returncode, time.time() - self.t0)
                    if p.returncode != 0 and failed_at is None:
                        failed_at = time.time()
            late = failed_at is not None and time.time() - failed_at > self.grace_s
            if len(exits) < self.hosts and (late or (deadline and time.time() > deadline)):
                self.kill()
                continue
            time.sleep(0.05)
        for t in self._threads:
            t.join(timeout=5)
        return sorted(exits.values(), key=lambda e: e.seconds)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)

    def __enter__(self) -> LocalHosts:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()


def summarize(exits: Sequence[HostExit], heartbeat_timeout_s: int) -> str | None:
    """None when every host ended well; else one line: who failed first and what followed."""
    bad = [e for e in exits if e.returncode != 0]
    if not bad:
        return None
    first, rest = bad[0], bad[1:]
    text = first.describe()
    if rest:
        lag = max(e.seconds for e in rest) - first.seconds
        text += (
            f"; the other host(s) stopped {lag:.1f} s later (JAX's coordination service "
            f"stops a job whose host sent no heartbeat for {heartbeat_timeout_s} s)"
        )
    return text + "; rerun the same command to resume from the newest complete checkpoint"


@contextlib.contextmanager
def forwarded_signals(hosts: LocalHosts) -> Iterator[None]:
    """SIGTERM / SIGINT to the launcher go to every host, as a pod's preemption reaches all."""

    def forward(signum: int, _frame: Any) -> None:
        for p in hosts.procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
