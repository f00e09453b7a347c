"""The orchestration layer end to end with the real tools: a fresh clone reproduced with DVC,
pushed to and pulled from a DVC remote; a `mlflow server` holding the parent/child runs and the
registered model; the local fallback when that server is down; the scheduled retrain deployment
served to a `prefect server` and its one-at-a-time lock.

One tiny pipeline execution (the module-scoped ``project``) serves every test; tests that run
stages again work on a copy of it.
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline.servers import free_port, mlflow_server, stop_group
from tests.conftest import REPO, TINY_PARAMS, merge

pytestmark = pytest.mark.slow  # real servers and real pipeline executions

VENV_BIN = Path(sys.executable).parent
# the working tree's sources laid over the clone, so the tests exercise the current code
SOURCES = ("pipeline", "psta", "dvc.yaml", "params.yaml", "Makefile", ".dvc/config", ".dvc/plots", ".dvcignore")
# one epoch of two steps: every stage runs for real, in seconds
FAST = {
    "train": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 8, "num_workers": 0,
              "val_fraction": 0.0, "eval_every": 0, "progress": False},
    "evaluate": {"num_workers": 0, "untrained_baseline": False},
}
STAGES = {"ingest", "index", "cache", "train", "evaluate", "gallery", "report"}


def tool_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_ENABLE_TELEMETRY": "false", **extra}
    for key in ("PYTHONPATH", "PSTA_PARENT_RUN_ID", "MLFLOW_RUN_ID"):
        env.pop(key, None)  # `python -m pipeline` finds the project's own package in its cwd
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600, check: bool = True):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def git(*args: str, cwd: Path):
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd, tool_env())


def make_project(dest: Path) -> None:
    """`git clone` of the repository, the working tree's sources on top, tiny params. The clone
    has no `origin`: a retrain pushes its git branch there, never into the repository under test."""
    git("clone", "-q", str(REPO), str(dest), cwd=dest.parent)
    git("remote", "remove", "origin", cwd=dest)
    for name in SOURCES:
        src, dst = REPO / name, dest / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(merge(merge(base, TINY_PARAMS), FAST)))


def copy_project(src: Path, dst: Path) -> None:
    """A copy sharing the big files of data/ and .dvc/cache as hard links (stages and DVC
    replace files by rename, never edit them in place); git and DVC state are real copies."""
    def link_or_copy(a: str, b: str) -> None:
        rel = Path(a).relative_to(src).as_posix()
        if rel.startswith(("data/", ".dvc/cache/")):
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy,
                    ignore=shutil.ignore_patterns("mlflow.db", "mlruns", "mlartifacts"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


class Project:
    def __init__(self, path: Path, env: dict[str, str]):
        self.path = path
        self.env = env

    def run(self, *cmd: str, **kwargs):
        return run(list(cmd), self.path, self.env, **kwargs)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api, tracking_server) -> Project:
    """A fresh clone, reproduced once by `python -m pipeline repro` against both servers."""
    path = tmp_path_factory.mktemp("orchestration") / "project"
    make_project(path)
    proj = Project(path, tool_env(PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=tracking_server))
    proj.run(sys.executable, "-m", "pipeline", "repro", timeout=900)
    return proj


def test_fresh_clone_reproduces_then_is_up_to_date_and_round_trips_through_the_remote(project):
    p = project.path
    outputs = [
        "data/ingest/manifest.parquet", "data/ingest/stats.json", "data/index/tracklets.parquet",
        "data/index/frames.parquet", "data/index/stats.json", "data/models/model.pt",
        "data/eval/features.npy", "data/eval/results.json", "reports/metrics.json", "reports/cmc.csv",
        "reports/train_history.csv", "reports/report.html", "reports/report.md", "dvc.lock",
        "data/gallery/header.json", "data/gallery/index.faiss",
    ]
    assert [name for name in outputs if not (p / name).is_file()] == []
    assert any((p / "data/cache").iterdir()) and any((p / "data/generated").rglob("*.jpg"))

    metrics = json.loads((p / "reports/metrics.json").read_text())
    shown = json.loads(project.run("dvc", "metrics", "show", "--json").stdout)
    assert shown[""]["data"]["reports/metrics.json"]["data"] == metrics
    assert 0 <= metrics["mars_official"]["mAP"] <= 100

    again = project.run("dvc", "repro")
    assert "Data and pipelines are up to date" in again.stdout
    assert "Running stage" not in again.stdout

    # the committed default remote (.dvc/config: a folder beside the checkout), no set-up at all
    pushed = project.run("dvc", "push")
    remote = p.parent / "psta-dvc-remote"
    assert remote.is_dir() and any(remote.rglob("*")), pushed.stdout
    git("add", "-A", cwd=p)
    git("commit", "-q", "-m", "tiny pipeline run", cwd=p)

    colleague = p.parent / "colleague"
    git("clone", "-q", str(p), str(colleague), cwd=p.parent)
    assert not (colleague / "data/models/model.pt").exists()
    run(["dvc", "pull"], colleague, project.env)
    compared = [*sorted((p / "data/index").iterdir()), p / "data/models/model.pt", p / "reports/report.html"]
    for original in compared:
        rel = original.relative_to(p)
        assert sha256(colleague / rel) == sha256(original), rel


def test_tracking_server_holds_parent_and_stage_runs_and_the_registered_model(project, tracking_server):
    api = f"{tracking_server}/api/2.0/mlflow"
    experiment = get_json(f"{api}/experiments/get-by-name?experiment_name=psta")["experiment"]
    runs = get_json(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    parents = [r for r in runs if tags(r).get("stage") == "pipeline"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    children = {tags(r)["stage"]: r for r in runs if tags(r).get("mlflow.parentRunId") == parent_id}
    assert set(children) == STAGES
    for stage, child in children.items():
        assert child["info"]["status"] == "FINISHED", stage
        assert child["data"].get("params"), stage
        assert {"git_commit", "params_hash", "data_version"} <= set(tags(child)), stage
    for stage in STAGES - {"report"}:
        assert children[stage]["data"].get("metrics"), stage
    metrics = json.loads((project.path / "reports/metrics.json").read_text())
    logged = {m["key"]: m["value"] for m in children["evaluate"]["data"]["metrics"]}
    assert logged["mars_official.mAP"] == pytest.approx(metrics["mars_official"]["mAP"])

    assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    # the demo registers under a name that says its test data is synthetic
    model = get_json(f"{api}/registered-models/get?name=psta-synthetic-mars")["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert aliases == {"candidate": "1", "champion": "1"}
    version = get_json(f"{api}/model-versions/get?name=psta-synthetic-mars&version=1")["model_version"]
    version_tags = {t["key"]: t["value"] for t in version["tags"]}
    assert float(version_tags["mAP"]) == pytest.approx(metrics["mars_official"]["mAP"])
    assert version_tags["protocol"] == "mars_official"
    assert (version_tags["source"], version_tags["dataset"]) == ("synthetic", "mars")
    assert len(version_tags["test_data_digest"]) == 64
    assert version["run_id"] == children["evaluate"]["info"]["run_id"]

    # the champion loads from the registry alone and embeds raw pixels like the checkpoint it came from
    import mlflow
    import numpy as np
    import torch

    from psta.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from psta.model import load_checkpoint

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_server)
    try:
        info = mlflow.models.get_model_info("models:/psta-synthetic-mars@champion")
        served = mlflow.pyfunc.load_model("models:/psta-synthetic-mars@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    reference, checkpoint = load_checkpoint(project.path / "data/models/model.pt")
    config = checkpoint["config"]
    (spec,) = info.signature.inputs.to_dict()
    assert spec["tensor-spec"]["dtype"] == "uint8" and list(spec["tensor-spec"]["shape"]) == [-1, -1, -1, -1, 3]
    frames = np.random.default_rng(0).integers(0, 256, (2, config["seq_len"], config["height"], config["width"], 3),
                                               dtype=np.uint8)
    clips = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255
    clips = (clips - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference(clips), dim=1).numpy()
    got = served.predict(frames)
    assert got.shape == (2, reference.feature_dim)
    # the served model runs at the evaluation's precision (bf16 where the CPU has it)
    assert (got * expected).sum(axis=1).min() >= 0.99


def test_tracking_server_holds_verification_datasets_and_report_images(project, tracking_server):
    """The calibrated threshold on the run and the registered version, the dataset as an input
    of the index and train runs, the report's figures as images: read back over REST."""
    api = f"{tracking_server}/api/2.0/mlflow"
    experiment = get_json(f"{api}/experiments/get-by-name?experiment_name=psta")["experiment"]
    runs = get_json(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    stage = {next(t["value"] for t in r["data"]["tags"] if t["key"] == "stage"): r for r in runs}
    metrics = json.loads((project.path / "reports/metrics.json").read_text())
    v = metrics["mars_official"]["verification"]
    assert 0 < v["threshold"] < 2 and v["target_fpr"] == 1e-3 and v["distance"] == "cosine"

    logged = {m["key"]: m["value"] for m in stage["evaluate"]["data"]["metrics"]}
    assert logged["mars_official.verification.threshold"] == pytest.approx(v["threshold"])
    assert logged["mars_official.rank1_ci95_low"] <= logged["mars_official.rank1"]
    version = get_json(f"{api}/model-versions/get?name=psta-synthetic-mars&version=1")["model_version"]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert float(tags["verification_threshold"]) == v["threshold"]
    assert tags["verification_distance"] == "cosine" and float(tags["verification_target_fpr"]) == 1e-3

    digest = None
    for name, context in (("index", "index"), ("train", "training")):
        run = get_json(f"{api}/runs/get?run_id={stage[name]['info']['run_id']}")["run"]
        (entry,) = run["inputs"]["dataset_inputs"]
        dataset = entry["dataset"]
        assert dataset["name"] == "synthetic-mars" and len(dataset["digest"]) == 12
        assert json.loads(dataset["source"])["uri"] == str((project.path / "data/generated/mars").resolve())
        assert {t["key"]: t["value"] for t in entry["tags"]}["mlflow.data.context"] == context
        assert digest in (None, dataset["digest"])   # both runs saw the same index
        digest = dataset["digest"]

    report_id = stage["report"]["info"]["run_id"]
    images = get_json(f"{api}/artifacts/list?run_id={report_id}&path=images")["files"]
    logged_png = {f["path"].split("/")[1].split("+step+")[0] for f in images if f["path"].endswith(".png")}
    assert logged_png >= {"cmc", "roc", "distances", "ap_hist", "embedding", "training", "ranked_best_1"}
    # the report names the version the evaluate run registered, and that run
    html = (project.path / "reports/report.html").read_text()
    assert "psta-synthetic-mars version 1" in html and stage["evaluate"]["info"]["run_id"] in html


def test_unreachable_tracking_server_warns_and_logs_locally(project, tmp_path):
    copy = tmp_path / "project"
    copy_project(project.path, copy)
    env = {**project.env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    proc = run([sys.executable, "-m", "pipeline", "evaluate"], copy, env)
    assert "is unreachable; logging to sqlite:///mlflow.db instead" in proc.stderr

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("psta")
    (evaluate,) = client.search_runs([experiment.experiment_id])
    assert evaluate.info.status == "FINISHED" and evaluate.data.tags["stage"] == "evaluate"
    # the registry lives in the fallback store too
    assert client.get_model_version_by_alias("psta-synthetic-mars", "champion").run_id == evaluate.info.run_id
    assert client.get_model_version_by_alias("psta-synthetic-mars", "candidate").run_id == evaluate.info.run_id


def other_test_data(index: Path, dest: Path) -> Path:
    """A copy of the index whose test split differs: one gallery tracklet relabelled."""
    from psta.index import read_index, write_index

    tracklet_index = read_index(index)
    tracklets = tracklet_index.tracklets
    row = tracklets.index[tracklets["split"] == "gallery"][0]
    tracklets.loc[row, "pid"] = int(tracklets["pid"].max()) + 1
    write_index(tracklet_index, dest)
    return dest / "stats.json"


def test_champion_moves_only_between_models_on_the_same_test_data(project, tmp_path):
    import mlflow

    from pipeline.registry import digest_of_test_split, register

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    experiment = client.create_experiment("registry", artifact_location=(tmp_path / "artifacts").as_uri())
    stats = project.path / "data/index/stats.json"
    other = other_test_data(project.path / "data/index", tmp_path / "other-index")
    assert digest_of_test_split(other.parent) != digest_of_test_split(stats.parent)
    metrics = json.loads((project.path / "reports/metrics.json").read_text())
    serving = {"sampling": "begin", "precision": "fp32", "batch_size": 8}

    def register_with(mAP: float, stats_path: Path = stats, source: str = "synthetic"):
        path = tmp_path / f"metrics-{mAP}.json"
        path.write_text(json.dumps({"mars_official": {**metrics["mars_official"], "mAP": mAP},
                                    "mars_torchreid": metrics["mars_torchreid"]}))
        with mlflow.start_run(experiment_id=experiment):
            return register(project.path / "data/models/model.pt", stats_path, path, serving,
                            project.path / "data/ingest/dataset.json", source=source)

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        first = register_with(50.0)
        worse = register_with(40.0)
        elsewhere = register_with(90.0, other)   # better, but on other test data: not compared
        tie = register_with(50.0)
        real = register_with(10.0, source="mars")  # a real dataset's model: its own name
    finally:
        mlflow.set_tracking_uri(previous)
    assert {first.name, worse.name, elsewhere.name, tie.name} == {"psta-synthetic-mars"}
    assert (first.champion, worse.champion, elsewhere.champion, tie.champion) == (True, False, False, True)
    assert "evaluated on other test data" in elsewhere.decision
    assert worse.previous_champion == first.version and tie.previous_champion == first.version
    name = "psta-synthetic-mars"
    assert str(client.get_model_version_by_alias(name, "candidate").version) == tie.version
    assert str(client.get_model_version_by_alias(name, "champion").version) == tie.version
    assert client.get_model_version(name, worse.version).tags["mAP"] == "40.0000"
    # the real dataset's registry starts its own champion, whatever the demo scored
    assert (real.name, real.champion, real.previous_champion) == ("psta-mars", True, None)
    assert client.get_model_version("psta-mars", real.version).tags["source"] == "mars"


def test_scheduled_retrain_deployment_runs_and_refuses_a_second_one(project, prefect_api, tmp_path):
    copy = tmp_path / "project"
    copy_project(project.path, copy)
    remote = tmp_path / "remote"
    env = {**project.env, "MLFLOW_TRACKING_URI": f"sqlite:///{copy / 'mlflow.db'}"}
    run(["dvc", "remote", "add", "--local", "-d", "tmp", str(remote)], copy, env)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["report"]["num_examples"] = 2  # a change the retrain has to reproduce
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    report_before = sha256(copy / "reports/report.html")

    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "pipeline", "serve"], cwd=copy, env=env,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deployment = None
        deadline = time.monotonic() + 120
        while deployment is None and time.monotonic() < deadline:
            assert serve.poll() is None, log.read_text()[-3000:]
            try:
                deployment = get_json(f"{prefect_api}/deployments/name/retrain/scheduled")
            except OSError:
                time.sleep(1)
        assert deployment is not None, log.read_text()[-3000:]
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * 0"]
        assert deployment["global_concurrency_limit"]["limit"] == 1

        first = run(["prefect", "deployment", "run", "retrain/scheduled", "--watch"], copy, env, timeout=600,
                    check=False)
        assert first.returncode == 0, first.stdout[-3000:] + log.read_text()[-5000:]
        assert "Completed" in first.stdout
        lock = yaml.safe_load((copy / "dvc.lock").read_text())
        (report_out,) = [o for o in lock["stages"]["report"]["outs"] if o["path"] == "reports/report.html"]
        assert sha256(copy / "reports/report.html") != report_before
        assert (remote / "files/md5" / report_out["md5"][:2] / report_out["md5"][2:]).is_file()

        import mlflow

        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        (parent,) = client.search_runs([client.get_experiment_by_name("psta").experiment_id],
                                       filter_string="tags.stage = 'pipeline'")
        assert parent.data.tags["retrain_outcome"] == "succeeded"
        assert parent.data.tags["retrain_pushed"] == "true"

        # while another retrain holds the lock, a second one is refused and touches nothing
        kept = ("dvc.lock", "reports/report.html", "data/models/model.pt")
        state_before = {name: sha256(copy / name) for name in kept}
        fd = os.open(copy / ".dvc/tmp/retrain.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            second = run(["prefect", "deployment", "run", "retrain/scheduled", "--watch"], copy, env,
                         timeout=300, check=False)
            holder = os.pread(fd, 64, 0).decode().strip()
        finally:
            os.close(fd)
        assert second.returncode == 1, second.stdout[-3000:]
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", second.stdout).group(1)
        state = get_json(f"{prefect_api}/flow_runs/{flow_run_id}")["state"]
        assert state["type"] == "FAILED"
        assert f"another retrain is running (pid {os.getpid()})" in state["message"]
        assert holder == str(os.getpid())
        assert {name: sha256(copy / name) for name in state_before} == state_before
        assert len(client.search_runs([client.get_experiment_by_name("psta").experiment_id],
                                      filter_string="tags.stage = 'pipeline'")) == 1
    finally:
        stop_group(serve)
