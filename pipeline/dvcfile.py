"""What dvc.yaml declares (each stage's deps and outputs), their content digest, and where a
dataset may not live.

DVC deletes a stage's outputs before it runs the stage (unless `persist: true`), and `dvc
checkout` overwrites them: a dataset inside an output is lost by a plain `dvc repro`. So a
dataset folder (params.yaml `data.root`) must neither lie inside an output nor contain one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from pipeline import paths
from psta.integrity import file_sha256

DVC_YAML = Path("dvc.yaml")
# the project this code belongs to: its dvc.yaml and sources stand in when the working
# directory is a bare scratch folder (params.yaml only), as in the tests
CODE_ROOT = Path(__file__).resolve().parents[1]
FRAME_CACHE_HEADER = "header.json"  # psta.data.cache.HEADER_FILE (not imported: torch is slow)


def _stages(dvc_yaml: Path) -> dict[str, Any]:
    if not dvc_yaml.is_file():
        return {}
    return (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}


def _entry_paths(entries: list | None) -> list[Path]:
    """Paths of a deps/outs/metrics/plots list: plain strings or one-key {path: options}."""
    out = []
    for entry in entries or []:
        out.extend(Path(p) for p in (entry if isinstance(entry, dict) else [entry]))
    return out


def stage_deps(stage: str, dvc_yaml: Path = DVC_YAML) -> list[Path]:
    if not dvc_yaml.is_file():
        dvc_yaml = CODE_ROOT / "dvc.yaml"
    return _entry_paths(_stages(dvc_yaml).get(stage, {}).get("deps"))


def stage_outs(stage: str, dvc_yaml: Path = DVC_YAML) -> list[Path]:
    """Every output of a stage: outs, metrics and plots files (DVC manages all three)."""
    spec = _stages(dvc_yaml).get(stage, {})
    return [*_entry_paths(spec.get("outs")), *_entry_paths(spec.get("metrics")),
            *_entry_paths(spec.get("plots"))]


def all_outs(dvc_yaml: Path = DVC_YAML) -> dict[Path, str]:
    """Every output path -> the stage writing it: dvc.yaml's, plus the stages' own (pipeline.paths)."""
    found = {path: stage for stage in _stages(dvc_yaml) for path in stage_outs(stage, dvc_yaml)}
    for path, stage in paths.STAGE_OUTPUTS.items():
        found.setdefault(path, stage)
    return found


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_dataset_root(source: str, root: str, params_file: str = "params.yaml",
                       dvc_yaml: Path = DVC_YAML) -> None:
    """Refuse a `data.root` inside (or holding) a pipeline output, before anything runs."""
    if source == "synthetic":
        return  # the tree is generated into data/generated; data.root is not read
    base = dvc_yaml.resolve().parent
    # both the path as written and with symlinks resolved: a dataset reached either way counts
    roots = {Path(os.path.abspath(root)), Path(root).resolve()}
    for out, stage in all_outs(dvc_yaml).items():
        targets = {Path(os.path.abspath(base / out)), (base / out).resolve()}
        for r in roots:
            for t in targets:
                if _inside(r, t) or _inside(t, r):
                    how = "lies inside" if _inside(r, t) else "contains"
                    name = Path(root).name or "MARS"
                    raise _error(
                        f"{params_file}: data.root {root!r} {how} {out}, an output of the {stage} "
                        f"stage in dvc.yaml. DVC deletes and rewrites stage outputs, so a dataset "
                        f"there would be lost. Keep datasets outside every output: move it (e.g. "
                        f"`mkdir -p {paths.DATASETS} && mv {root} {paths.DATASETS / name}`) and set "
                        f"data.root: {paths.DATASETS / name} ({paths.DATASETS}/ is ignored by git "
                        f"and DVC), or point data.root at the dataset wherever it is; it is read "
                        f"in place and never written.")


def _error(message: str) -> Exception:
    from pipeline.params import ParamsError

    return ParamsError(message)


def _files(dep: Path) -> list[Path]:
    if dep.is_file():
        return [dep]
    if (dep / FRAME_CACHE_HEADER).is_file():
        # a frame cache's header holds the sha256 of every shard and table, and every read is
        # checked against the cache's per-frame CRC-32C: the header stands for the content
        return [dep / FRAME_CACHE_HEADER]
    return sorted(p for p in dep.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def deps_digest(stage: str, dvc_yaml: Path = DVC_YAML) -> str:
    """sha256 over the content of every file of a stage's dvc.yaml deps (code and data)."""
    deps = stage_deps(stage, dvc_yaml)
    if not deps:
        raise FileNotFoundError(f"{dvc_yaml}: no stage {stage!r} with deps (run from the project root)")
    h = hashlib.sha256()
    for dep in deps:
        base = next((b for b in (Path(), CODE_ROOT) if (b / dep).exists()), None)
        if base is None:
            raise FileNotFoundError(f"{dep}, a dependency of stage {stage} in {dvc_yaml}, is missing; "
                                    f"run the stages before it (`dvc repro {stage}`)")
        for f in _files(base / dep):
            h.update(f"{f.relative_to(base).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()
