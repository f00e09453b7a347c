"""`dvc exp run -S` on our params.yaml changes one line, and `make exps` compares experiments.

A scratch git + DVC repository holds the project's real params.yaml and Makefile, and a stage
that writes reports/metrics.json in the evaluate stage's layout from the params it reads.
"""
import difflib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow  # real `dvc exp run` and `make`

METRICS_STAGE = '''import json
from ruamel.yaml import YAML
train = YAML(typ="safe").load(open("params.yaml"))["train"]
scores = {"rank1": 50 + train["epochs"], "rank5": 90, "rank10": 95, "rank20": 97, "mAP": 40 + train["epochs"],
          "mINP": 20}
json.dump({"mars_official": scores, "mars_torchreid": scores,
           "untrained": {"mars_official": {"rank1": 5, "mAP": 10}}}, open("reports/metrics.json", "w"))
'''
DVC_YAML = """stages:
  evaluate:
    cmd: python evaluate.py
    deps: [evaluate.py]
    params: [model, train]
    metrics:
      - reports/metrics.json:
          cache: false
"""


def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def test_dvc_exp_run_set_param_changes_one_line_and_make_exps_shows_what_matters(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    (repo / "evaluate.py").write_text(METRICS_STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "reports").mkdir()
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "repro", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "baseline", cwd=repo)

    sh("dvc", "exp", "run", "-q", "-S", "train.epochs=3", cwd=repo)
    before_text = (REPO / "params.yaml").read_text()
    before = before_text.splitlines()
    after = (repo / "params.yaml").read_text().splitlines()
    changed = [d for d in difflib.ndiff(before, after) if d[:2] in ("- ", "+ ")]
    epochs = yaml.safe_load(before_text)["train"]["epochs"]  # the demo's, whatever it is now
    assert [c.split("#")[0].rstrip() for c in changed] == [f"-   epochs: {epochs}", "+   epochs: 3"]
    assert changed[1].endswith("# paper: 500")  # DVC keeps the comment

    table = sh("make", "-s", "-f", str(REPO / "Makefile"), "exps", f"VENV={VENV_BIN.parent}", cwd=repo)
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    assert header == ["Experiment", "mars_official.rank1", "mars_official.mAP", "mars_torchreid.rank1",
                      "mars_torchreid.mAP", "train.epochs"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert ["53", "43", "53", "43", "3"] in [row[1:] for row in rows]  # the experiment: epochs 3
    baseline = [str(50 + epochs), str(40 + epochs)] * 2 + [str(epochs)]
    assert baseline in [row[1:] for row in rows]  # its baseline
