"""Faults as users meet them, with real processes: a dataset where DVC would delete it, a code
change after a finished training, damaged model and cache files, SIGKILLed stages, two
trainings at once, a tracking server that dies mid-training.

One tiny pipeline execution (the module-scoped ``project``: a fresh clone whose MARS copy sits
at the old default data.root, data/raw/MARS, reproduced by plain `dvc repro`) serves every
test; tests that change things work on a copy of it.
"""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.servers import free_port, mlflow_server, spawn_mlflow_server, stop_group
from tests.conftest import TINY_PARAMS
from tests.test_orchestration import Project, copy_project, make_project, sha256, tool_env

# real pipeline executions; the module's first test also pays for the shared one
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

OLD_DEFAULT_ROOT = "data/raw/MARS"


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def set_params(path: Path, **sections) -> None:
    params = yaml.safe_load((path / "params.yaml").read_text())
    for name, values in sections.items():
        params[name] = {**params[name], **values}
    (path / "params.yaml").write_text(yaml.safe_dump(params))


def replace_file(path: Path, data: bytes) -> None:
    """Write new bytes without touching the inode (copies share data/ files as hard links)."""
    path.unlink()
    path.write_bytes(data)


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    replace_file(path, bytes(data))


def pipeline(proj: Project, *args: str, check: bool = True, timeout: float = 600):
    return proj.run(sys.executable, "-m", "pipeline", *args, check=check, timeout=timeout)


def start(proj: Project, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=proj.path, env=proj.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@contextlib.contextmanager
def paused(proc: subprocess.Popen):
    """``proc``'s process group stopped (SIGSTOP): it keeps its locks and cannot finish before a
    second process, however slow to start on a busy machine, has tried to take them."""
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) first:\n{proc.stderr.read()[-3000:]}")
        time.sleep(poll)
    raise AssertionError("timed out")


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def copy_of(project: Project, tmp_path: Path) -> Project:
    """A copy of the project with its own MLflow store."""
    copy = tmp_path / "project"
    copy_project(project.path, copy)
    return Project(copy, {**project.env, "MLFLOW_TRACKING_URI": f"sqlite:///{copy / 'mlflow.db'}"})


def mlflow_runs(path: Path, stage: str):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("psta")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'")


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api) -> Project:
    from psta.data.synthetic import SyntheticConfig, generate_mars

    path = tmp_path_factory.mktemp("reliability") / "project"
    make_project(path)
    generate_mars(path / OLD_DEFAULT_ROOT, SyntheticConfig(**TINY_PARAMS["synthetic"]))
    set_params(path, data={"source": "mars", "root": OLD_DEFAULT_ROOT})
    env = tool_env(PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=f"sqlite:///{path / 'mlflow.db'}")
    proj = Project(path, env)
    proj.before = tree_digest(path / OLD_DEFAULT_ROOT)
    proj.repro = proj.run("dvc", "repro", timeout=900)  # plain DVC, no `python -m pipeline repro`
    return proj


def test_plain_dvc_repro_keeps_a_dataset_at_the_old_default_place(project):
    p = project.path
    assert tree_digest(p / OLD_DEFAULT_ROOT) == project.before  # every frame and info file intact
    assert (p / "data/models/model.pt").is_file() and (p / "reports/metrics.json").is_file()
    assert json.loads((p / "data/generated/SOURCE.json").read_text())["root"] == OLD_DEFAULT_ROOT
    assert json.loads((p / "data/ingest/dataset.json").read_text())["root"] == OLD_DEFAULT_ROOT
    # read in place, never copied into an output
    assert not list((p / "data").glob("*/bbox_train")) and not list((p / "data/generated").rglob("*.jpg"))
    again = project.run("dvc", "repro")
    assert "Data and pipelines are up to date" in again.stdout
    assert tree_digest(p / OLD_DEFAULT_ROOT) == project.before
    status = subprocess.run(["git", "status", "--porcelain"], cwd=p, capture_output=True, text=True).stdout
    assert "data/" not in status, status


def test_a_dataset_inside_an_output_is_refused_before_anything_is_deleted(project, tmp_path):
    proj = copy_of(project, tmp_path)
    copy = proj.path
    inside = copy / "data/generated/MARS"
    import shutil

    shutil.copytree(copy / OLD_DEFAULT_ROOT, inside)
    set_params(copy, data={"root": "data/generated/MARS"})
    before = tree_digest(inside)

    refused = pipeline(proj, "repro", check=False)
    assert refused.returncode == 2
    (message,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert "data.root 'data/generated/MARS' lies inside data/generated, an output of the ingest stage" in message
    assert "set data.root: datasets/MARS" in message
    assert "Running stage" not in refused.stdout  # refused before DVC ran
    assert tree_digest(inside) == before

    # plain `dvc repro`: DVC keeps the persisted output, the stage refuses before writing
    plain = proj.run("dvc", "repro", check=False)
    assert plain.returncode != 0 and "lies inside data/generated" in plain.stderr
    assert tree_digest(inside) == before


def test_a_code_change_retrains_from_scratch_and_publishes_new_weights(project, tmp_path):
    proj = copy_of(project, tmp_path)
    copy = proj.path
    old_model = sha256(copy / "data/models/model.pt")
    (old_key,) = [d.name for d in (copy / "data/train").iterdir() if d.is_dir()]
    with open(copy / "psta/losses.py", "a") as f:  # a real change: the total loss counts 3x
        f.write("\n\n_forward = PSTALoss.forward\n\n\ndef _tripled(self, *args, **kwargs):\n"
                "    total, parts = _forward(self, *args, **kwargs)\n    return 3.0 * total, parts\n\n\n"
                "PSTALoss.forward = _tripled\n")
    out = proj.run("dvc", "repro")
    assert "Running stage 'train'" in out.stdout
    (new_key,) = [d.name for d in (copy / "data/train").iterdir() if d.is_dir()]
    assert new_key != old_key
    assert sha256(copy / "data/models/model.pt") != old_model
    latest = max(mlflow_runs(copy, "train"), key=lambda r: r.info.start_time)
    assert latest.data.metrics.get("loss_total") is not None  # epochs ran: not "resumed" past the end
    lock = yaml.safe_load((copy / "dvc.lock").read_text())
    (model_out,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "data/models"]
    assert model_out["md5"]

    # the same inputs again (forced): a finished run is trained again, never resumed past its end
    again = pipeline(proj, "train")
    assert "resuming from" not in again.stderr
    latest = max(mlflow_runs(copy, "train"), key=lambda r: r.info.start_time)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    history = client.get_metric_history(latest.info.run_id, "loss_total")
    assert [m.step for m in history] == [0]


def test_damaged_model_or_cache_is_refused_by_evaluate_and_nothing_is_registered(project, tmp_path):
    import mlflow

    proj = copy_of(project, tmp_path)
    copy = proj.path
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    versions = len(client.search_model_versions("name = 'psta-mars'"))

    fix = ("re-create it with the train stage (`dvc repro train` or `python -m pipeline train`), or restore "
           "the tracked copy with `dvc checkout data/models` / `dvc pull`")
    model = copy / "data/models/model.pt"
    for damage, what in ((flip_byte, "is damaged: its sha256 differs from model.pt.sha256"),
                         (lambda p: replace_file(p, b""), "is empty (0 bytes): not a checkpoint"),
                         (lambda p: p.unlink(), "is missing")):
        damage(model)
        proc = pipeline(proj, "evaluate", check=False)
        assert proc.returncode == 2
        # one line: the file, what is wrong with it, how to get it back; no traceback
        assert proc.stderr.strip().splitlines()[-1].endswith(f"data/models/model.pt {what}; {fix}"), proc.stderr
        assert "Traceback" not in proc.stderr
        proj.run("dvc", "checkout", "--force", "data/models")

    proj.run("dvc", "checkout", "--force", "data/models")
    from psta.index import read_index

    header = json.loads((copy / "data/cache/header.json").read_text())
    assert header["format"] == "raw"
    query = read_index(copy / "data/index").tracklets.query("split == 'query'").iloc[0]
    row = int(query.frame_offset)  # a frame evaluate reads
    shard = header["shards"][row // header["frames_per_shard"]]["file"]
    where = (row % header["frames_per_shard"] + 0.5) * header["frame_bytes"]
    flip_byte(copy / "data/cache" / shard, where / (copy / "data/cache" / shard).stat().st_size)
    proc = pipeline(proj, "evaluate", check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: frame cache file data/cache/{shard} is damaged: frame row {row} fails")
    assert "rebuild it with the cache stage" in last
    assert len(client.search_model_versions("name = 'psta-mars'")) == versions


def test_killed_writers_leave_temporaries_the_next_run_sweeps_and_one_training_at_a_time(project, tmp_path):
    proj = copy_of(project, tmp_path)
    copy = proj.path
    set_params(copy, train={"epochs": 3, "max_steps_per_epoch": 2, "checkpoint_every_steps": 1})

    first = start(proj, "train")
    lock = copy / ".dvc/tmp/stage-train.lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first)
    with paused(first):
        second = pipeline(proj, "train", check=False)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: another `python -m pipeline train` is running in this project (pid {first.pid}); "
        "this one is refused and changed nothing")

    temp = wait_for(lambda: list((copy / "data/train").glob("*/.checkpoint.pt.*.tmp")), first)
    kill(first)
    assert all(t.exists() for t in temp)  # the kill left a half-written checkpoint
    killed_run = json.loads((copy / ".dvc/tmp/stage-train.run.json").read_text())["run_id"]
    done = pipeline(proj, "train")
    assert not any(t.exists() for t in temp)
    assert f"note: removed {temp[0].relative_to(copy)}" in done.stderr
    # the killed run could not end itself: this start marked it
    runs = {r.info.run_id: r for r in mlflow_runs(copy, "train")}
    assert runs[killed_run].info.status == "KILLED"
    assert runs[killed_run].data.tags["psta.closed_by"].startswith("next train start: the stage was killed")
    assert f"note: marked the previous train run {killed_run} KILLED" in done.stderr

    build = start(proj, "cache")
    temp = wait_for(lambda: list((copy / "data").glob(".cache.*.tmp")), build)
    kill(build)
    assert all(t.exists() for t in temp)
    swept = pipeline(proj, "cache")
    assert not list((copy / "data").glob(".cache.*")), swept.stderr


def test_two_dvc_repro_at_once_one_runs_and_the_other_is_refused(project, tmp_path):
    """DVC's repository lock refuses a second `dvc repro`; the stage lock refuses a direct
    `python -m pipeline train` beside the train stage the first one runs."""
    proj = copy_of(project, tmp_path)
    copy = proj.path
    set_params(copy, train={"epochs": 2, "max_steps_per_epoch": 2})  # train (and after it) is out of date
    first = subprocess.Popen(["dvc", "repro"], cwd=copy, env=proj.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lock = copy / ".dvc/tmp/stage-train.lock"
        holder = wait_for(lambda: lock.is_file() and lock.read_text().strip(), first)  # train is running
        with paused(first):
            second = proj.run("dvc", "repro", check=False)
            direct = pipeline(proj, "train", check=False)
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            kill(first)
    # DVC's repository lock ("Unable to acquire lock") or its lock on the outputs in use
    assert second.returncode != 0, second.stdout
    assert re.search(r"Unable to acquire lock|is busy, it is being blocked by:\s+\(PID \d+\): \S*dvc repro",
                     second.stderr), second.stderr[-2000:]
    assert direct.returncode == 1
    assert direct.stderr.strip().splitlines()[-1].startswith(
        f"error: another `python -m pipeline train` is running in this project (pid {holder})")
    assert first.returncode == 0, err[-3000:]
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    assert "Data and pipelines are up to date" in proj.run("dvc", "status").stdout
    from psta.integrity import check_digest

    assert check_digest(copy / "data/models/model.pt", required=True)
    assert len((copy / "reports/train_history.csv").read_text().splitlines()) == 1 + 2


def test_a_tracking_server_killed_mid_training_costs_the_training_nothing(project, tmp_path):
    import mlflow

    proj = copy_of(project, tmp_path)
    copy = proj.path
    set_params(copy, train={"epochs": 6, "max_steps_per_epoch": 2})
    store, port = tmp_path / "server", free_port()
    server, uri = spawn_mlflow_server(store, port)
    proj.env.update(MLFLOW_TRACKING_URI=uri, PSTA_TRACKING_FLUSH_S="5")
    try:
        client = mlflow.MlflowClient(uri)
        training = start(proj, "train")

        def first_epoch_logged():
            experiment = client.get_experiment_by_name("psta")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return [r for r in runs if "loss_total" in r.data.metrics]

        (run,) = wait_for(first_epoch_logged, training, poll=0.2)
        os.killpg(server.pid, signal.SIGKILL)  # the server dies mid-training
        server.wait()
        out, err = training.communicate(timeout=600)
    finally:
        stop_group(server)
    assert training.returncode == 0, err[-3000:]
    history = (copy / "reports/train_history.csv").read_text().splitlines()
    assert len(history) == 1 + 6  # every epoch trained and written
    from psta.integrity import check_digest

    assert check_digest(copy / "data/models/model.pt", required=True)
    assert f"warning: the MLflow server {uri} stopped answering" in err
    assert f"not logged to run {run.info.run_id}:" in err
    assert re.search(r"- \d+ metric values at steps \d+\.\.5 \(.*loss_total", err), err[-3000:]
    assert "- artifact reports/train_history.csv" in err and "- artifact data/models/model.pt" in err
    assert "it shows RUNNING there until the next `python -m pipeline train` marks it FINISHED" in err

    # the server is back: the next start ends that run with the status it really had
    server, uri = spawn_mlflow_server(store, port)
    try:
        set_params(copy, train={"epochs": 1})
        again = pipeline(proj, "train")
        old = mlflow.MlflowClient(uri).get_run(run.info.run_id)
    finally:
        stop_group(server)
    assert old.info.status == "FINISHED"
    assert "metric values at steps" in old.data.tags["psta.unlogged"]
    assert f"note: marked the previous train run {run.info.run_id} FINISHED" in again.stderr


def test_no_credential_of_the_tracking_uri_is_shown_or_stored(project, tmp_path, prefect_api):
    import mlflow

    proj = copy_of(project, tmp_path)
    set_params(proj.path, retrain={"push": False})
    with mlflow_server(tmp_path / "server") as uri:
        proj.env["MLFLOW_TRACKING_URI"] = uri.replace("http://", "http://alice:s3cret@")
        report = pipeline(proj, "report")
        retrain = pipeline(proj, "retrain")
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("psta").experiment_id])
    assert {r.data.tags["stage"] for r in runs} == {"report", "pipeline"}
    for proc in (report, retrain):
        assert "s3cret" not in proc.stdout + proc.stderr
    for run_ in runs:
        assert "s3cret" not in json.dumps([run_.data.tags, run_.data.params])
    from tests.test_orchestration import get_json

    artifacts = get_json(f"{prefect_api}/artifacts/filter", {"artifacts": {"key": {"any_": ["retrain-outcome"]}}})
    assert artifacts and all("s3cret" not in json.dumps(a) for a in artifacts)
    assert any(uri in json.dumps(a) for a in artifacts)  # the server is named, without credentials
    logs = get_json(f"{prefect_api}/logs/filter", {"limit": 200, "sort": "TIMESTAMP_DESC"})
    assert logs and all("s3cret" not in entry["message"] for entry in logs)

    proj.env["MLFLOW_TRACKING_URI"] = f"http://alice:s3cret@127.0.0.1:{free_port()}"  # nobody there
    fallback = pipeline(proj, "report")
    assert "is unreachable; logging to sqlite:///mlflow.db instead" in fallback.stderr
    assert "s3cret" not in fallback.stdout + fallback.stderr
