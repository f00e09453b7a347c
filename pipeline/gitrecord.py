"""Record a retrain in git, so that other clones can `dvc pull` what it produced.

`dvc push` uploads a retrain's outputs, but they are reachable only through the dvc.lock that
names them. After a successful retrain, :func:`record` commits that dvc.lock, the git-tracked
outputs (metrics, CMC, training history: the ``cache: false`` entries of dvc.yaml) and every
tracked file that differs from HEAD onto the branch ``retrain.branch`` (default ``retrain``),
and pushes the branch to ``retrain.git_remote`` when that remote exists and the data was pushed.

The checkout itself is left alone: no checkout, no change of HEAD, of the index or of the work
tree (the commit is built in a temporary index). Each retrain commit has the previous one as
first parent and, when the served checkout moved on, its HEAD as second parent; a retrain that
changed nothing adds no commit. Elsewhere:
``git clone --branch retrain <url> && cd <clone> && dvc pull``.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

LOCK = "dvc.lock"
METRICS = Path("reports/metrics.json")
# used only where git has no identity configured (a service account, CI)
IDENTITY = {"GIT_AUTHOR_NAME": "psta retrain", "GIT_AUTHOR_EMAIL": "psta-retrain@localhost",
            "GIT_COMMITTER_NAME": "psta retrain", "GIT_COMMITTER_EMAIL": "psta-retrain@localhost"}


class GitRecordError(RuntimeError):
    """A git command failed; the message names it and git's answer."""


def _git(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise GitRecordError(f"git {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def git_tracked_outputs(dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """The stage outputs DVC leaves to git: outs / metrics / plots entries with ``cache: false``."""
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages", {})
    paths = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                if isinstance(entry, dict):
                    for path, options in entry.items():
                        if (options or {}).get("cache", True) is False:
                            paths.append(path)
    return paths


def _message(head: str) -> str:
    try:
        metrics = json.loads(METRICS.read_text())
    except (OSError, ValueError):
        metrics = {}
    from pipeline.registry import headline

    try:
        protocol, numbers = headline(metrics)
        result = f"{protocol} rank-1 {numbers['rank1']:.1f} / mAP {numbers['mAP']:.1f}"
    except (ValueError, KeyError, TypeError):
        result = "no metrics"
    return (f"retrain: {result}\n\ndvc.lock and metrics of a retrain of {head[:12]} "
            "(python -m pipeline retrain); its outputs are on the DVC remote: `dvc pull`.\n")


def _env(index: str) -> dict[str, str]:
    env = {**os.environ, "GIT_INDEX_FILE": index}
    if not _git("config", "user.email", check=False).stdout.strip():
        env.update({k: v for k, v in IDENTITY.items() if k not in os.environ})
    return env


def _sha(ref: str | None) -> str | None:
    if not ref:
        return None
    proc = _git("rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _is_ancestor(a: str, b: str) -> bool:
    return _git("merge-base", "--is-ancestor", a, b, check=False).returncode == 0


def _parents(local: str | None, remote: str | None, head: str) -> list[str]:
    """The branch's newest tip (ours, or the remote's when it is ahead) and HEAD when not in it."""
    tip = remote if local is None or (remote is not None and _is_ancestor(local, remote)) else local
    return [tip] if tip and _is_ancestor(head, tip) else [p for p in (tip, head) if p]


def record(branch: str, remote: str, push: bool) -> dict[str, Any]:
    """Commit the retrain's lock and metrics onto ``branch``; push it to ``remote`` if ``push``."""
    if _git("rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        return {"commit": None, "git_pushed": False, "note": "not a git checkout: nothing recorded"}
    if _git("check-ref-format", "--branch", branch, check=False).returncode != 0:
        raise GitRecordError(f"params.yaml retrain.branch={branch!r} is not a valid git branch name")
    head = _git("rev-parse", "HEAD").stdout.strip()
    remotes = _git("remote").stdout.split()
    remote_ref = None
    if remote in remotes and _git("ls-remote", "--exit-code", "--heads", remote, branch, check=False).returncode == 0:
        _git("fetch", "-q", remote, f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}")
        remote_ref = f"refs/remotes/{remote}/{branch}"
    branch_ref = f"refs/heads/{branch}"
    old = _sha(branch_ref)
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(str(Path(tmp) / "index"))
        _git("read-tree", "HEAD", env=env)
        _git("add", "-u", env=env)
        _git("add", "-f", "--", *[p for p in (LOCK, *git_tracked_outputs()) if Path(p).exists()], env=env)
        tree = _git("write-tree", env=env).stdout.strip()
        parents = _parents(old, _sha(remote_ref), head)
        if parents[0] != head and _git("rev-parse", f"{parents[0]}^{{tree}}").stdout.strip() == tree:
            commit = parents[0]  # nothing new since the last retrain commit
        else:
            args = [arg for parent in parents for arg in ("-p", parent)]
            commit = _git("commit-tree", tree, *args, "-m", _message(head), env=env).stdout.strip()
    _git("update-ref", branch_ref, commit, *([old] if old else []))
    if _git("symbolic-ref", "-q", "HEAD", check=False).stdout.strip() == branch_ref:
        _git("reset", "-q")  # the checkout is on that branch: its index follows the new commit
    pushed = False
    if push and remote in remotes:
        _git("push", "-q", remote, f"{branch_ref}:{branch_ref}")
        pushed = True
    return {"commit": commit, "branch": branch, "git_pushed": pushed,
            "note": "" if remote in remotes else f"no git remote {remote!r}: committed locally only"}
