"""Start the real servers the way a user does, each in its own process group.

`prefect server start` and `mlflow server` spawn children of their own (uvicorn workers, job
consumers); killing the whole process group is the only way to leave nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers a GET with 200 within ``timeout`` seconds (a server's health check)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200
    except OSError:
        return False


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with code {proc.returncode} before answering {url}:\n{tail}")
        if http_ok(url):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no answer from {url} after {timeout:.0f} s")


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def tool_path(name: str) -> str:
    """The command ``name`` (dvc, mlflow, prefect) of this interpreter's environment, else from PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


@contextlib.contextmanager
def prefect_server(home: Path, port: int | None = None, timeout: float = 90.0) -> Iterator[str]:
    """A `prefect server start` on 127.0.0.1 with its state in ``home``; yields the API URL."""
    port = port or free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [tool_path("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", timeout, proc, log)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop_group(proc)


def spawn_mlflow_server(store: Path, port: int | None = None, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """Start a `mlflow server` on 127.0.0.1 backed by SQLite in ``store``; returns it (its own
    process group: stop it with :func:`stop_group`) and its tracking URI, once it answers."""
    port = port or free_port()
    store.mkdir(parents=True, exist_ok=True)
    log = store / "server.log"
    cmd = [
        tool_path("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"), "--workers", "1",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout, proc, log)
    except BaseException:
        stop_group(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def mlflow_server(store: Path, port: int | None = None, timeout: float = 90.0) -> Iterator[str]:
    """A `mlflow server` on 127.0.0.1 backed by SQLite in ``store``; yields the tracking URI."""
    proc, uri = spawn_mlflow_server(store, port, timeout)
    try:
        yield uri
    finally:
        stop_group(proc)
