"""A local cluster for MultiWorkerMirroredStrategy: one TF_CONFIG per process, free ports.

``tf.distribute.MultiWorkerMirroredStrategy`` reads the cluster from the ``TF_CONFIG``
environment variable. On real hosts every host gets the same ``cluster`` and its own ``task``;
on one machine, ``run_local_workers`` starts N processes on 127.0.0.1 so multi-worker training
can be tried (and tested) without a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerResult", "free_port", "local_tf_configs", "run_local_workers"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now.

    Args:
        host: The address to bind, a loopback address by default.

    Returns:
        The port number.

    Raises:
        OSError: If no port can be bound on ``host``.

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def local_tf_configs(num_workers: int, host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """One ``TF_CONFIG`` dict per worker of a cluster on ``host``, each worker on a free port.

    Args:
        num_workers: How many workers (>= 1). Worker 0 is the chief.
        host: The address the workers listen on.

    Returns:
        A list of ``{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}``; put
        ``json.dumps(configs[i])`` in the ``TF_CONFIG`` environment variable of process i.

    Raises:
        ValueError: If ``num_workers`` < 1.

    Example:
        >>> configs = local_tf_configs(2)
        >>> [c["task"]["index"] for c in configs], len(configs[0]["cluster"]["worker"])
        ([0, 1], 2)
    """
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"local_tf_configs needs num_workers >= 1, but received {num_workers!r}.")
    ports: list[int] = []
    while len(ports) < num_workers:  # distinct ports, even if the OS hands one out twice
        p = free_port(host)
        if p not in ports:
            ports.append(p)
    cluster = {"worker": [f"{host}:{p}" for p in ports]}
    return [
        {"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(num_workers)
    ]


@dataclass
class WorkerResult:
    """What one worker process did: its index, exit code and combined stdout/stderr."""

    index: int
    returncode: int
    output: str


def run_local_workers(
    argv: Sequence[str],
    num_workers: int,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = 300.0,
    echo: int | None = None,
) -> list[WorkerResult]:
    """Run the same command as ``num_workers`` local processes forming one TF cluster.

    Each process gets its own ``TF_CONFIG`` (see ``local_tf_configs``) and the environment
    variable ``TAPEKIT_WORKER_INDEX``. When one worker fails, the others are stopped (a collective
    would otherwise wait for it forever); on timeout or interruption (Ctrl-C), all are.

    Args:
        argv: The command, e.g. ``[sys.executable, "train.py", "--epochs", "2"]``.
        num_workers: The number of workers (>= 1).
        env: Extra environment variables for every worker.
        cwd: Working directory of the workers.
        timeout: Seconds to wait for all workers together.
        echo: Index of a worker whose output is also copied to ``sys.stdout`` as it comes
            (e.g. 0, the chief's progress lines); its Python output is then unbuffered.

    Returns:
        One ``WorkerResult`` per worker, in index order.

    Raises:
        ValueError: If ``argv`` is empty, ``num_workers`` < 1 or ``echo`` is no worker's index.
        TimeoutError: If the workers have not finished after ``timeout`` seconds (their output so
            far is in the message).

    Example:
        >>> import sys
        >>> code = "import os; print(os.environ['TAPEKIT_WORKER_INDEX'])"
        >>> [r.output.strip() for r in run_local_workers([sys.executable, "-c", code], 2)]
        ['0', '1']
    """
    if not argv:
        raise ValueError("run_local_workers needs a command, e.g. [sys.executable, 'train.py'].")
    configs = local_tf_configs(num_workers)
    if echo is not None and echo not in range(num_workers):
        raise ValueError(
            f"run_local_workers: echo must be a worker index in 0..{num_workers - 1} or None, "
            f"but received {echo!r}."
        )
    procs, logs = [], []
    try:
        for i, config in enumerate(configs):
            # A file, not a pipe: a full pipe would block a worker. Read through its own handle.
            log = tempfile.NamedTemporaryFile(mode="w", prefix="tapekit-worker-", delete=False)
            logs.append(log)
            worker_env = dict(os.environ, **(env or {}))
            worker_env.update(TF_CONFIG=json.dumps(config), TAPEKIT_WORKER_INDEX=str(i))
            if i == echo:
                worker_env["PYTHONUNBUFFERED"] = "1"
            procs.append(
                subprocess.Popen(
                    list(argv), env=worker_env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
                )
            )
        shown = open(logs[echo].name, errors="replace") if echo is not None else None  # noqa: SIM115
        deadline = time.monotonic() + timeout
        try:
            while [p.poll() for p in procs].count(None):  # poll every one (no short cut)
                _copy(shown)
                if any(p.returncode not in (None, 0) for p in procs):
                    break  # one failed: the rest would wait for it in a collective
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"run_local_workers: {num_workers} workers did not finish within "
                        f"{timeout:.0f} s. Output so far:\n" + "\n".join(_read(g) for g in logs)
                    )
                time.sleep(0.05)
            _copy(shown)
        finally:
            if shown is not None:
                shown.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        outputs = [_read(log) for log in logs]
        for log in logs:
            log.close()
            os.unlink(log.name)
    return [WorkerResult(i, p.returncode, out) for i, (p, out) in enumerate(zip(procs, outputs))]


def _copy(stream: Any) -> None:
    """Copy what a worker wrote since the last call to our stdout."""
    if stream is not None:
        text = stream.read()
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()


def _read(log: Any) -> str:
    log.flush()
    with open(log.name, errors="replace") as f:
        return f.read()


if __name__ == "__main__":  # pragma: no cover - a tiny manual check
    print(run_local_workers([sys.executable, "-c", "print('hello')"], 2))
