"""The stages on the iLIDS-VID, PRID-2011 and LS-VID layouts, and the 10-split protocol as real
DVC experiments summarised by `python -m pipeline splits-summary`."""
from __future__ import annotations

import json
import math
import statistics
import subprocess

import mlflow
import pytest
import yaml

from psta.index import read_index
from tests.test_orchestration import FAST, git, make_project, run, tool_env

pytestmark = pytest.mark.slow  # real stage processes, a Prefect server, DVC experiments

GENERATED = "data/generated"  # where ingest writes a synthetic tree: data/generated/<layout>


def runs_by_stage(tracking_uri: str) -> dict:
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("psta")
    out: dict = {}
    for run_ in client.search_runs([experiment.experiment_id]):
        out.setdefault(run_.data.tags["stage"], []).append(run_)
    return out


@pytest.mark.parametrize("layout", ["ilidsvid", "prid", "lsvid"])
def test_ingest_and_index_on_each_layout(workspace, layout):
    split = 0 if layout == "lsvid" else 2
    workspace.write_params({"data": {"split": split, "split_seed": 3},
                            "synthetic": {"layout": layout}})
    workspace.run("ingest")
    workspace.run("index")
    stats = json.loads((workspace.path / "data/ingest/stats.json").read_text())
    planted = stats["planted"]
    if layout == "ilidsvid":
        planted["splits"] = planted["per_split"][split]
    index = read_index(workspace.path / "data/index")
    for name, counts in planted["splits"].items():
        assert index.stats["splits"][name]["tracklets"] == counts["tracklets"]
        assert index.stats["splits"][name]["identities"] == counts["identities"]
    ingest_runs = runs_by_stage(workspace.env["MLFLOW_TRACKING_URI"])
    for stage in ("ingest", "index"):
        (run_,) = ingest_runs[stage]
        assert run_.data.tags.get("data_split") == (None if layout == "lsvid" else str(split))
    if layout == "lsvid":
        assert "split" not in index.stats and index.stats["splits"]["val"]["tracklets"] > 0
        return
    assert index.stats["split"]["index"] == split == stats["chosen_split"]["index"]
    drawn = workspace.path / "data/ingest/splits.json"
    if layout == "prid":      # drawn splits go to the outputs, never into the dataset
        assert index.stats["split"]["source"] == "drawn from data.split_seed=3"
        splits = json.loads(drawn.read_text())
        assert len(splits) == 10 and all(len(s["test"]) == 8 and len(s["train"]) == 8 for s in splits)
        query_pids = set(index.tracklets.query("split == 'query'").pid)
        assert sorted(f"person_{p:04d}" for p in query_pids) == splits[2]["test"]
        assert not list((workspace.path / GENERATED / layout).rglob("*.json"))
    else:
        assert not drawn.exists()


def test_lsvid_trains_with_its_validation_list_and_refuses_a_second_holdout(workspace):
    train = {**FAST["train"], "eval_every": 1}
    workspace.write_params({"synthetic": {"layout": "lsvid"}, "train": train})
    for stage in ("ingest", "index", "cache", "train"):
        workspace.run(stage)
    history = (workspace.path / "reports/train_history.csv").read_text().splitlines()
    assert "val_rank1" in history[0] and "val_mAP" in history[0]
    workspace.write_params({"synthetic": {"layout": "lsvid"},
                            "train": {**train, "val_fraction": 0.2}})
    proc = workspace.run("train", check=False)
    assert proc.returncode == 2
    assert ("train.val_fraction=0.2 / train.val_ids=[]: lsvid brings its own validation list"
            in proc.stderr.strip().splitlines()[-1])


@pytest.mark.timeout(3000)  # two full pipeline executions; room for a busy shared machine
def test_ten_split_protocol_as_dvc_experiments_and_the_summary(tmp_path, prefect_api):
    """Two splits of a tiny synthetic iLIDS-VID as queued DVC experiments, then splits-summary."""
    path = tmp_path / "project"
    make_project(path)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["synthetic"].update(layout="ilidsvid", num_train_ids=6, num_test_ids=6)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    git("add", "-A", cwd=path)
    git("commit", "-qm", "tiny iLIDS-VID", cwd=path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = tool_env(PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=uri)
    run(["dvc", "exp", "run", "--queue", "-S", "data.split=range(0,2)"], path, env)
    run(["dvc", "exp", "run", "--run-all"], path, env, timeout=2700)
    proc = run(["python", "-m", "pipeline", "splits-summary"], path, env)

    result = json.loads((path / "reports/splits.json").read_text())
    assert result["dataset"] == "ilidsvid" and result["splits"] == [0, 1]
    assert result["missing_splits"] == list(range(2, 10))
    per_split = []
    for exp in result["experiments"]:      # each experiment's own metrics.json, as DVC committed it
        shown = subprocess.run(["git", "show", f"{exp['rev']}:reports/metrics.json"], cwd=path,
                               capture_output=True, text=True, check=True).stdout
        committed = json.loads(shown)["ilidsvid"]
        assert exp["metrics"]["ilidsvid"] == committed
        per_split.append(committed)
    for metric in ("rank1", "rank5", "rank10", "rank20", "mAP"):
        values = [m[metric] for m in per_split if math.isfinite(m[metric])]   # NaN: gallery shorter than the rank
        got = result["summary"]["ilidsvid"][metric]
        if values:
            assert got == {"mean": round(statistics.fmean(values), 2), "std": round(statistics.stdev(values), 2),
                           "n": 2}
        else:
            assert got == {"mean": None, "std": None, "n": 0}
    assert result["summary"]["ilidsvid"]["rank1"]["n"] == 2
    table = (path / "reports/splits.md").read_text()
    assert "2 of 10 splits" in table and "| ilidsvid | 2 |" in table and "| ilidsvid | 2 |" in proc.stdout

    stages = runs_by_stage(uri)
    assert sorted(r.data.tags["data_split"] for r in stages["evaluate"]) == ["0", "1"]
    (summary_run,) = stages["splits-summary"]
    assert summary_run.data.metrics["ilidsvid.rank1.mean"] == result["summary"]["ilidsvid"]["rank1"]["mean"]
    report = subprocess.run(["git", "show", f"{result['experiments'][0]['rev']}:dvc.lock"], cwd=path,
                            capture_output=True, text=True, check=True).stdout
    assert "report" in yaml.safe_load(report)["stages"]
