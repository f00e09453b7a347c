"""Day-to-day operations with the real tools: the log of a `make run`-equivalent written to a
file, the Prefect UI over the kept flow-run history, the MLflow store and `make ui`, `dvc plots
show` rendered offline in headless Chromium, and a retrain that reaches a fresh clone through
a bare git remote and the DVC remote.

One tiny pipeline execution (the module-scoped ``ops``) serves every test: a fresh clone with
a bare git remote, reproduced by `python -m pipeline repro` with its own Prefect server (state
in .prefect/) and the local MLflow store, its output redirected to a file. The retrain test
changes the project, so it comes last.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.servers import free_port, stop_group, wait_http
from tests.conftest import merge
from tests.test_orchestration import get_json, git, make_project, run, sha256, tool_env

pytestmark = pytest.mark.slow

EPOCHS = 2
OPS = {
    "train": {"epochs": EPOCHS, "max_steps_per_epoch": 2, "batch_size": 8, "num_workers": 0,
              "val_fraction": 0.25, "eval_every": 1, "progress": True},
    "evaluate": {"num_workers": 0, "untrained_baseline": False},
}
STAGES = ("ingest", "index", "cache", "train", "evaluate", "gallery", "report")
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (`make test` installs them)")


class Ops:
    def __init__(self, root: Path):
        self.root = root
        self.path = root / "project"
        self.origin = root / "origin.git"
        self.log = root / "repro.log"
        self.env = tool_env()  # no PREFECT_API_URL, no MLFLOW_TRACKING_URI: what `make run` sees

    def run(self, *cmd: str, **kwargs):
        return run(list(cmd), self.path, self.env, **kwargs)

    def mlflow(self):
        import mlflow

        return mlflow.MlflowClient(f"sqlite:///{self.path / 'mlflow.db'}")

    def stage_run(self, stage: str):
        client = self.mlflow()
        experiment = client.get_experiment_by_name("psta")
        (found,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.stage = '{stage}'")
        return found


@pytest.fixture(scope="module")
def ops(tmp_path_factory) -> Ops:
    project = Ops(tmp_path_factory.mktemp("ops"))
    make_project(project.path)
    params = merge(yaml.safe_load((project.path / "params.yaml").read_text()), OPS)
    (project.path / "params.yaml").write_text(yaml.safe_dump(params))
    # the team's shared repository: a bare remote, never the repository under test
    git("init", "-q", "--bare", str(project.origin), cwd=project.root)
    git("remote", "add", "origin", str(project.origin), cwd=project.path)
    git("add", "-A", cwd=project.path)
    git("commit", "-q", "-m", "tiny project", cwd=project.path)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=project.path)
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=project.origin)
    with open(project.log, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "pipeline", "repro"], cwd=project.path, env=project.env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=1500)
    assert proc.returncode == 0, project.log.read_text(errors="replace")[-5000:]
    return project


def test_the_log_of_a_run_has_one_line_per_epoch_no_bars_and_a_summary(ops):
    raw = ops.log.read_bytes()
    assert b"\r" not in raw, "a progress bar was written to a file"
    text = raw.decode()
    lines = text.splitlines()
    assert max(map(len, lines)) < 1000, max(lines, key=len)[:300]
    for epoch in range(1, EPOCHS + 1):
        (line,) = [x for x in lines if re.search(rf"\bepoch {epoch}/{EPOCHS}: ", x)]
        for field in (r"\blr\b", r"\bloss", r"clips", r"\bval"):  # losses, lr, clips/s, validation
            assert re.search(field, line), line
    summary = lines[lines.index(next(x for x in lines if x.startswith("PSTA pipeline finished"))):]
    text = "\n".join(summary)
    metrics = json.loads((ops.path / "reports/metrics.json").read_text())["mars_official"]
    assert f"rank-1 {metrics['rank1']:.1f}%  mAP {metrics['mAP']:.1f}%  (mars_official protocol)" in text
    assert "reports/report.html" in text
    parent = ops.stage_run("pipeline")
    assert f"run {parent.info.run_id}" in text
    assert "model psta-synthetic-mars version 1 [candidate,champion]" in text
    assert f"`make ui`, then http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/" in text
    assert "`make prefect-ui`, then http://127.0.0.1:4200/runs" in text


def test_prefect_ui_serves_the_kept_history_with_named_tagged_linked_runs(ops, prefect_api):
    # any server we start tells its UI the port it serves (the session's, on a random port)
    assert get_json(prefect_api.removesuffix("/api") + "/ui-settings")["api_url"] == prefect_api

    port = free_port()
    log = ops.root / "prefect-ui.log"
    with open(log, "wb") as out:
        ui = subprocess.Popen([sys.executable, "-m", "pipeline", "prefect-ui", "--port", str(port)],
                              cwd=ops.path, env=ops.env, stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        api = f"http://127.0.0.1:{port}/api"
        wait_http(f"{api}/health", 120, ui, log)
        assert get_json(f"http://127.0.0.1:{port}/ui-settings")["api_url"] == api
        runs = get_json(f"{api}/flow_runs/filter", {"limit": 50})
        assert sorted(r["name"] for r in runs) == sorted(STAGES)  # named after the stage
        train = next(r for r in runs if r["name"] == "train")
        mlflow_train = ops.stage_run("train")
        assert f"params:{mlflow_train.data.tags['params_hash'][:12]}" in train["tags"]
        assert f"mlflow-run:{mlflow_train.info.run_id}" in train["tags"]
        assert mlflow_train.data.tags["prefect_flow_run_id"] == train["id"]

        tasks = get_json(f"{api}/task_runs/filter", {"flow_runs": {"id": {"any_": [train["id"]]}}})
        names = {re.sub(r"-\w+$", "", t["name"]) for t in tasks}
        assert {"prepare-data-and-model", "fit", "write-history", "publish-model"} <= names, names
        logs = get_json(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [train["id"]]}}, "limit": 200})
        for epoch in range(1, EPOCHS + 1):
            (line,) = [x["message"] for x in logs if x["message"].startswith(f"epoch {epoch}/{EPOCHS}: ")]
            assert re.search(r"\bloss", line) and re.search(r"\bval", line), line
        (link,) = get_json(f"{api}/artifacts/filter", {"artifacts": {"key": {"any_": ["mlflow-run-train"]}}})
        assert f"/runs/{mlflow_train.info.run_id}" in link["data"]
    finally:
        stop_group(ui)


def test_mlflow_store_kind_percent_and_artifacts_in_the_checkout_that_runs(ops, prefect_api):
    client = ops.mlflow()
    experiment = client.get_experiment_by_name("psta")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert Path(experiment.artifact_location) == ops.path / "mlruns" / experiment.experiment_id

    # validation in percent, as the test metrics: 100 x the trainer's fractions
    train = ops.stage_run("train")
    (state,) = (ops.path / "data/train").glob("*/history.json")
    fractions = [row["val_mAP"] for row in json.loads(state.read_text())]
    logged = [m.value for m in sorted(client.get_metric_history(train.info.run_id, "val_mAP"), key=lambda m: m.step)]
    assert logged == pytest.approx([100 * f for f in fractions]) and len(logged) == EPOCHS
    import pandas as pd

    history = pd.read_csv(ops.path / "reports/train_history.csv")
    assert history["val_mAP"].tolist() == pytest.approx(logged)

    # a copied checkout (mlflow.db and mlruns/ included) logs into the copy, and says so
    copy = ops.root / "copy"
    shutil.copytree(ops.path, copy, symlinks=True)
    proc = run([sys.executable, "-m", "pipeline", "index"], copy, {**ops.env, "PREFECT_API_URL": prefect_api})
    assert "mlflow.db was copied from another checkout" in proc.stderr
    import mlflow

    copied = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    (newest, *_) = copied.search_runs([experiment.experiment_id], filter_string="tags.stage = 'index'",
                                      order_by=["attributes.start_time DESC"])
    assert newest.info.artifact_uri.startswith(str(copy / "mlruns")), newest.info.artifact_uri
    assert (copy / "mlruns" / experiment.experiment_id / newest.info.run_id / "artifacts/stats.json").is_file()
    assert not (ops.path / "mlruns" / experiment.experiment_id / newest.info.run_id).exists()


def test_make_ui_serves_the_store_with_one_worker(ops):
    venv = Path(sys.executable).parent.parent
    port = free_port()
    log = ops.root / "make-ui.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        ui = subprocess.Popen(["make", "-o", f"{venv}/.installed", "ui", f"VENV={venv}", f"UI_PORT={port}"],
                              cwd=ops.path, env=ops.env, stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, ui, log)
        answered = time.monotonic() - started
        group = subprocess.run(["ps", "-o", "args=", "-g", str(ui.pid)], capture_output=True, text=True).stdout
        servers = [line for line in group.splitlines() if "uvicorn" in line or "huey" in line]
        assert len(servers) == 1, group  # one uvicorn worker, no GenAI job consumers
        experiment = get_json(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=psta")
        tags = {t["key"]: t["value"] for t in experiment["experiment"]["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        print(f"make ui answered after {answered:.1f} s")
    finally:
        stop_group(ui)


def _chrome(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,1400",
                 # no network at all: every host unresolvable, every request through a dead proxy
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)


RENDERED = """
return Array.from(document.querySelectorAll('body > div[id]')).map(div => {
  const canvas = div.querySelector('canvas');
  if (!canvas) return [div.id, 0, 0, 0];
  const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let ink = 0, blue = 0, orange = 0;  // vega's first two category colours: #4c78a8, #f58518
  for (let i = 0; i < px.length; i += 4) {
    const [r, g, b, a] = [px[i], px[i + 1], px[i + 2], px[i + 3]];
    if (a > 0 && Math.min(r, g, b) < 200) ink++;
    if (Math.abs(r - 76) + Math.abs(g - 120) + Math.abs(b - 168) < 40) blue++;
    if (Math.abs(r - 245) + Math.abs(g - 133) + Math.abs(b - 24) < 40) orange++;
  }
  return [div.id, ink, blue, orange];
});
"""


def _rendered(page: Path, profile: Path) -> dict[str, tuple[int, int, int]]:
    driver = _chrome(profile)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.resolve().as_uri())
        deadline = time.monotonic() + 20
        result = driver.execute_script(RENDERED)
        while time.monotonic() < deadline and not all(r[1] for r in result):
            time.sleep(0.5)
            result = driver.execute_script(RENDERED)
        driver.save_screenshot(str(page.with_suffix(".png")))
        return {div: tuple(counts) for div, *counts in result}
    finally:
        driver.quit()


@needs_chromium
def test_dvc_plots_show_draws_every_plot_once_offline(ops, tmp_path):
    shown = json.loads(ops.run("dvc", "plots", "show", "--json").stdout)
    assert not shown.get("errors"), shown["errors"]
    assert set(shown["data"]) == {"cmc", "losses", "validation", "lr"}  # each plot once
    cmc = shown["data"]["cmc"][0]["content"]["data"]["values"]
    assert {row["protocol"] for row in cmc} == {"mars_official", "mars_torchreid"}

    ops.run("dvc", "plots", "show", "-o", str(tmp_path / "offline"))
    rendered = _rendered(tmp_path / "offline/index.html", tmp_path / "profile-1")
    assert set(rendered) == {"cmc", "losses", "validation", "lr"}
    assert all(ink > 500 for ink, _, _ in rendered.values()), rendered
    _, blue, orange = rendered["cmc"]
    assert blue > 50 and orange > 50, rendered["cmc"]  # a curve per protocol

    # DVC's own page, which loads Vega from a CDN, stays blank here: what the template fixes
    from dvc_render.html import PAGE_HTML

    (tmp_path / "cdn.html").write_text(PAGE_HTML)
    ops.run("dvc", "plots", "show", "--html-template", str(tmp_path / "cdn.html"), "-o", str(tmp_path / "cdn"))
    assert "cdn.jsdelivr.net" in (tmp_path / "cdn/index.html").read_text()
    blank = _rendered(tmp_path / "cdn/index.html", tmp_path / "profile-2")
    assert all(ink == 0 for ink, _, _ in blank.values()), blank


def test_zz_retrain_reaches_a_fresh_clone_through_git_and_dvc_remotes(ops, prefect_api):
    """Last: it changes the project. After `make run` the README says to commit and push."""
    p = ops.path
    ops.run("dvc", "push")
    git("add", "dvc.lock", "params.yaml", "reports", cwd=p)
    git("commit", "-q", "-m", "make run", cwd=p)
    git("push", "-q", "origin", "HEAD:main", cwd=p)
    before = sha256(p / "data/models/model.pt")
    head = git("rev-parse", "HEAD", cwd=p).stdout.strip()
    branch = git("symbolic-ref", "HEAD", cwd=p).stdout.strip()

    params = yaml.safe_load((p / "params.yaml").read_text())
    params["train"]["seed"] = 1  # a change the retrain has to reproduce: a new model
    (p / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**ops.env, "PREFECT_API_URL": prefect_api}
    proc = run([sys.executable, "-m", "pipeline", "retrain"], p, env, timeout=900)
    after = sha256(p / "data/models/model.pt")
    assert after != before, proc.stdout[-2000:]

    # the checkout is left as it was: same HEAD, branch and index; the commit is on `retrain`
    assert git("rev-parse", "HEAD", cwd=p).stdout.strip() == head
    assert git("symbolic-ref", "HEAD", cwd=p).stdout.strip() == branch
    assert git("diff", "--cached", "--name-only", cwd=p).stdout == ""
    retrain = git("rev-parse", "refs/heads/retrain", cwd=p).stdout.strip()
    assert git("rev-parse", "refs/heads/retrain", cwd=ops.origin).stdout.strip() == retrain
    assert git("merge-base", "--is-ancestor", head, retrain, cwd=p).returncode == 0
    committed = set(git("diff", "--name-only", head, retrain, cwd=p).stdout.split())
    assert {"dvc.lock", "params.yaml", "reports/metrics.json", "reports/train_history.csv"} <= committed
    client = ops.mlflow()
    parents = client.search_runs([client.get_experiment_by_name("psta").experiment_id],
                                 filter_string="tags.stage = 'pipeline'", order_by=["attributes.start_time DESC"])
    assert parents[0].data.tags["retrain_git_commit"] == retrain

    # the documented commands, in a fresh clone beside the project (the default DVC remote)
    fresh = ops.root / "fresh"
    git("clone", "-q", "--branch", "retrain", str(ops.origin), str(fresh), cwd=ops.root)
    run(["dvc", "pull"], fresh, ops.env)
    assert sha256(fresh / "data/models/model.pt") == after
    # ...while the main branch still gives the model of the run before
    main = ops.root / "main"
    git("clone", "-q", str(ops.origin), str(main), cwd=ops.root)
    run(["dvc", "pull"], main, ops.env)
    assert sha256(main / "data/models/model.pt") == before

    # a second retrain with nothing to do adds no commit
    run([sys.executable, "-m", "pipeline", "retrain"], p, env, timeout=900)
    assert git("rev-parse", "refs/heads/retrain", cwd=p).stdout.strip() == retrain
