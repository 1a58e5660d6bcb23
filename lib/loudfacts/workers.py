"""Run a long loop in several one-thread worker processes and relay their output.

On the 2-core CPU this repo is built on, the loops of causal tracing (one small forward per
token) and evaluation (one edit per record) work on batches too small to keep two threads
busy: two one-thread processes, each taking every other item, get through more items per
minute than one two-thread process. `run_workers` starts `python -m <module> ... --part i/n`
for i < n with one thread each, relays their output line by line as it comes (so papermill
and terminals show progress), waits, and raises with the failed worker's last lines.
The workers write their results to files (appended per item), so an interrupted run resumes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence


class WorkerError(RuntimeError):
    """A worker process exited with a non-zero status."""


def one_thread_env() -> dict:
    """The environment for a worker: one BLAS/OpenMP thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_workers(module: str, args: Sequence[str], n: int, part_flag: str = "--part") -> None:
    """Run `python -m module *args part_flag i/n` for i in 0..n-1 concurrently.

    Raises:
        WorkerError: a worker failed; the message has its exit status and last lines.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"workers must be a positive int, got {n!r}")
    lock = threading.Lock()
    procs, tails, threads = [], [], []

    def relay(proc, tail):
        for line in proc.stdout:
            tail.append(line.rstrip())
            del tail[:-20]
            with lock:
                print(line, end="", flush=True)

    for i in range(n):
        cmd = [sys.executable, "-m", module, *map(str, args), part_flag, f"{i}/{n}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=one_thread_env())
        tail: list[str] = []
        t = threading.Thread(target=relay, args=(proc, tail), daemon=True)
        t.start()
        procs.append(proc)
        tails.append(tail)
        threads.append(t)
    try:
        codes = [p.wait() for p in procs]
    except BaseException:  # interrupted: do not leave workers running
        for p in procs:
            p.kill()
        raise
    for t in threads:
        t.join()
    for i, code in enumerate(codes):
        if code != 0:
            raise WorkerError(f"worker {i}/{n} ({module}) exited with status {code}; last "
                              "lines:\n" + "\n".join(tails[i]))
