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
from typing import Callable, Iterator


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free on 127.0.0.1 (0: any free port), else a free one."""
    for port in dict.fromkeys((preferred, 0)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


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


def start_in_group(command: Callable[[int], tuple[list[str], dict[str, str]]], health_path: str, log: Path,
                   timeout: float, port: int | None = None, preferred: int = 0,
                   attempts: int = 3) -> tuple[subprocess.Popen, int]:
    """Start ``command(port)`` in its own process group, logging to ``log``; return it and its
    port once ``health_path`` answers 200.

    A port from :func:`free_port` is free when it is chosen, not when the server binds it: in
    between another process (a parallel test, a client's outgoing connection) may take it.
    Without a fixed ``port``, a server that exits saying so is started again on another port.
    """
    for attempt in range(1 if port else attempts):
        chosen = port or free_port(preferred if attempt == 0 else 0)
        cmd, env = command(chosen)
        logged = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{chosen}{health_path}", timeout, proc, log)
            return proc, chosen
        except RuntimeError:
            stop_group(proc)
            if port or attempt == attempts - 1 or not _port_was_taken(log, logged):
                raise
        except BaseException:
            stop_group(proc)
            raise
    raise AssertionError("unreachable")


def _port_was_taken(log: Path, offset: int) -> bool:
    """Whether the server logged, after ``offset``, that its port was already in use."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace").lower()
    return "address already in use" in text or "errno 98" in text


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


def prefect_command(home: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """`prefect server start` on 127.0.0.1:``port`` with its state (database, log) in ``home``.

    The UI is told the served port: by default it calls the API on port 4200 and shows
    "Can't connect to Server API" for a server on any other port.
    """
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_URL", None)
    return [tool_path("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env


@contextlib.contextmanager
def prefect_server(home: Path, port: int | None = None, timeout: float = 90.0, preferred: int = 0) -> Iterator[str]:
    """A Prefect server (:func:`prefect_command`) in the background; yields the API URL.

    ``port``: exactly that port; else ``preferred`` when it is free, else any free one."""
    home.mkdir(parents=True, exist_ok=True)
    proc, port = start_in_group(lambda p: prefect_command(home, p), "/api/health", home / "server.log",
                                timeout, port, preferred)
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop_group(proc)


def serve_prefect_ui(home: Path, port: int) -> int:
    """The Prefect server and UI over the history in ``home``, in the foreground (Ctrl-C stops it)."""
    home.mkdir(parents=True, exist_ok=True)
    cmd, env = prefect_command(home, port)
    print(f"Prefect UI over {home}: http://127.0.0.1:{port} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def spawn_mlflow_server(store: Path, port: int | None = None, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """Start a `mlflow server` on 127.0.0.1 backed by SQLite in ``store``; returns it (its own
    process group: stop it with :func:`stop_group`) and its tracking URI, once it answers."""
    store.mkdir(parents=True, exist_ok=True)

    def command(port: int) -> tuple[list[str], dict[str, str]]:
        return [
            tool_path("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"), "--workers", "1",
        ], {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # GenAI jobs: 8 processes we never use

    proc, port = start_in_group(command, "/health", store / "server.log", timeout, port)
    return proc, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def mlflow_server(store: Path, port: int | None = None, timeout: float = 90.0) -> Iterator[str]:
    """A `mlflow server` on 127.0.0.1 backed by SQLite in ``store``; yields the tracking URI."""
    proc, uri = spawn_mlflow_server(store, port, timeout)
    try:
        yield uri
    finally:
        stop_group(proc)


@contextlib.contextmanager
def model_server(model_uri: str, tracking_uri: str, log: Path, port: int | None = None,
                 timeout: float = 240.0) -> Iterator[str]:
    """`mlflow models serve -m <model_uri> --env-manager local` on 127.0.0.1, as a user starts it
    (the venv's bin on PATH: the server execs `uvicorn`); yields its base URL."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def command(port: int) -> tuple[list[str], dict[str, str]]:
        return [tool_path("mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                "--host", "127.0.0.1", "--port", str(port)], env

    proc, port = start_in_group(command, "/ping", log, timeout, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)
