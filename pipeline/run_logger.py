"""Logging that never stops a stage: metrics and artefacts are sent by a background thread.

A tracking server that dies mid-training must cost the training nothing. The stage hands each
metric batch or artefact to :class:`BackgroundLogger`, which returns at once; its thread sends
them in order and, when the server does not answer, keeps them and retries with a growing pause
(1 s to 30 s). At the end of the stage, :meth:`BackgroundLogger.close` waits a bounded time
(``PSTA_TRACKING_FLUSH_S``, 30 s by default) for what is still queued and returns a description
of what could not be sent, which the stage prints.
"""
from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

FLUSH_ENV = "PSTA_TRACKING_FLUSH_S"
MAX_PAUSE_S = 30.0


@dataclass(frozen=True)
class _Item:
    kind: str  # "metrics" | "artifact"
    payload: Any
    step: int | None = None
    artifact_path: str | None = None
    timestamp: int = 0  # ms, when the stage logged it


class BackgroundLogger:
    """Send one MLflow run's metrics and artefacts from a daemon thread, in order."""

    def __init__(self, tracking_uri: str, run_id: str):
        import mlflow

        self.run_id = run_id
        self._client = mlflow.MlflowClient(tracking_uri)
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._sending = False
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._put(_Item("metrics", dict(metrics), step=step, timestamp=int(time.time() * 1000)))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._put(_Item("artifact", str(path), artifact_path=artifact_path))

    def _put(self, item: _Item) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify()

    def _send(self, item: _Item) -> None:
        if item.kind == "metrics":
            from mlflow.entities import Metric

            self._client.log_batch(self.run_id, metrics=[
                Metric(key, float(value), item.timestamp, item.step or 0) for key, value in item.payload.items()])
        else:
            self._client.log_artifact(self.run_id, item.payload, item.artifact_path)

    def _run(self) -> None:
        pause = 1.0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue[0]
                self._sending = True
            try:
                self._send(item)
            except Exception as err:  # the server is down or refuses: keep the item, retry later
                self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                with self._cond:
                    self._sending = False
                    self._cond.wait(timeout=pause)
                pause = min(2 * pause, MAX_PAUSE_S)
                continue
            pause = 1.0
            with self._cond:
                self._queue.popleft()
                self._sending = False
                self._cond.notify_all()

    def close(self, timeout: float | None = None) -> list[str]:
        """Wait up to ``timeout`` s for the queue to drain; describe what was not sent."""
        if timeout is None:
            timeout = float(os.environ.get(FLUSH_ENV, "30"))
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._queue or self._sending) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            left = list(self._queue)
            self._queue.clear()
        return describe(left)


def describe(items: list[_Item]) -> list[str]:
    """One line per kind of unsent item: the metrics' names and steps, the artefacts' paths."""
    lines = []
    metrics = [i for i in items if i.kind == "metrics"]
    if metrics:
        keys = sorted({k for i in metrics for k in i.payload})
        steps = sorted({i.step for i in metrics if i.step is not None})
        where = f" at steps {steps[0]}..{steps[-1]}" if steps else ""
        lines.append(f"{sum(len(i.payload) for i in metrics)} metric values{where} ({', '.join(keys)})")
    lines += [f"artifact {i.payload}" for i in items if i.kind == "artifact"]
    return lines
