"""The stage pattern end to end: `python -m pipeline <stage>` as dvc.yaml calls it."""
import json

import mlflow
import pandas as pd
import pytest

from psta.index import read_index
from tests.conftest import TINY_PARAMS

pytestmark = pytest.mark.slow  # each test runs real stage processes against a Prefect server


def search_runs(ws, filter_string=""):
    client = mlflow.MlflowClient(ws.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("psta")
    return client.search_runs([experiment.experiment_id], filter_string)


def stage_runs(ws):
    return {run.data.tags["stage"]: run for run in search_runs(ws)}


def test_ingest_then_index_write_the_index_and_log_to_mlflow(workspace):
    workspace.run("ingest")
    workspace.run("index")
    ingest_stats = json.loads((workspace.path / "data/ingest/stats.json").read_text())
    planted = ingest_stats["planted"]["splits"]
    index = read_index(workspace.path / "data/index")
    for split in ("train", "query", "gallery"):
        rows = index.tracklets[index.tracklets.split == split]
        assert len(rows) == planted[split]["tracklets"]
    manifest = pd.read_parquet(workspace.path / "data/ingest/manifest.parquet")
    assert len(manifest) == ingest_stats["frames"] and manifest["ok"].all()

    runs = stage_runs(workspace)
    assert runs["ingest"].info.status == "FINISHED"
    assert runs["ingest"].data.params["synthetic.num_train_ids"] == "8"
    assert runs["index"].data.metrics["num_classes"] == 8
    assert len(runs["index"].data.tags["git_commit"]) in (40, len("unknown"))


def test_bad_params_fail_before_any_work(workspace):
    workspace.write_params({"data": {"on_bad_frame": "ignore"}})
    proc = workspace.run("ingest", check=False)
    assert proc.returncode == 2
    assert "data.on_bad_frame: expected 'error' | 'skip', got str 'ignore'" in proc.stderr
    assert not (workspace.path / "data").exists()


def test_missing_dataset_root_is_one_clear_error_and_leaves_no_output(workspace):
    missing = workspace.path / "nowhere" / "MARS"
    workspace.write_params({"data": {"source": "mars", "root": str(missing)}})
    proc = workspace.run("ingest", check=False)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr.splitlines()[-1]
    assert not (workspace.path / "data" / "ingest").exists()
    runs = stage_runs(workspace)
    assert runs["ingest"].info.status == "FAILED"


def test_users_mars_copy_with_a_bad_frame_error_then_skip(workspace):
    from psta.data.synthetic import SyntheticConfig, generate_mars

    root = workspace.path / "user" / "MARS"
    generate_mars(root, SyntheticConfig(**TINY_PARAMS["synthetic"]))
    bad = sorted((root / "bbox_train").rglob("*.jpg"))[3]
    bad.write_bytes(b"")
    workspace.write_params({"data": {"source": "mars", "root": str(root)}})
    proc = workspace.run("ingest", check=False)
    assert proc.returncode == 2
    message = proc.stderr.splitlines()[-1]
    assert bad.name in message and "on_bad_frame: skip" in message
    assert not (workspace.path / "data" / "ingest").exists()

    workspace.write_params({"data": {"source": "mars", "root": str(root), "on_bad_frame": "skip"}})
    workspace.run("ingest")
    workspace.run("index")
    stats = json.loads((workspace.path / "data/index/stats.json").read_text())
    assert stats["skipped_bad_frames"] == 1
    index = read_index(workspace.path / "data/index")
    assert not index.frames.path.str.endswith(bad.name).any()
    source = json.loads((workspace.path / "data/generated/SOURCE.json").read_text())
    assert source["root"] == str(root)


def test_videos_source_runs_ingest_and_index_unchanged(workspace):
    from tests.test_videos import CFG, make_source

    src = make_source(workspace.path / "cameras")
    workspace.write_params({"data": {"source": "videos", "root": str(src)}, "videos": CFG.to_dict()})
    workspace.run("ingest")
    workspace.run("index")
    ingest_stats = json.loads((workspace.path / "data/ingest/stats.json").read_text())
    built = ingest_stats["planted"]["splits"]
    index = read_index(workspace.path / "data/index")
    for split in ("train", "query", "gallery"):
        assert (index.tracklets.split == split).sum() == built[split]["tracklets"]
    assert ingest_stats["layout"] == "mars" and ingest_stats["bad_frames"] == 0
    assert (workspace.path / "data/generated/mars/info/query_IDX.mat").exists()


def test_train_stage_under_torchrun_ddp(workspace):
    import subprocess
    import sys
    from pathlib import Path

    import torch

    workspace.write_params({"train": {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 8, "num_workers": 0,
                                      "val_fraction": 0.0, "eval_every": 0}})
    for stage in ("ingest", "index", "cache"):
        workspace.run(stage)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "pipeline", "train"],
                          cwd=workspace.path, env=workspace.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (state,) = (workspace.path / "data/train").glob("*/checkpoint.pt")
    checkpoint = torch.load(state, weights_only=True)
    assert checkpoint["world_size"] == 2 and checkpoint["global_step"] == 2
    assert (workspace.path / "data/models/model.pt").exists()
    train_runs = search_runs(workspace, "tags.stage = 'train'")
    assert [run.info.status for run in train_runs] == ["FINISHED"]  # rank 0's run alone


def test_missing_imagenet_weights_fail_before_training_and_say_where_to_put_them(workspace, tmp_path):
    workspace.write_params({"model": {"pretrained": "imagenet"}})
    workspace.env["TORCH_HOME"] = str(tmp_path / "torch-home")
    proc = workspace.run("train", check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in message
    assert "resnet18-f37072fd.pth" in message
    assert not (workspace.path / "data").exists()


def test_users_mars_copy_with_a_damaged_scan_and_frames_of_another_size(workspace):
    from psta.data.synthetic import SyntheticConfig, generate_mars

    root = workspace.path / "user" / "MARS"
    generate_mars(root, SyntheticConfig(**TINY_PARAMS["synthetic"]))  # 64 x 32 frames, not MARS's 256 x 128
    frames = sorted((root / "bbox_train").rglob("*.jpg"))
    victim = frames[5]
    data = victim.read_bytes()
    victim.write_bytes(data[:data.index(b"\xff\xda") + 60] + b"\xff\xd9")  # scan cut: decodes grey
    workspace.write_params({"data": {"source": "mars", "root": str(root)}})
    proc = workspace.run("ingest", check=False)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert victim.name in message and "Corrupt JPEG data" in message and "on_bad_frame: skip" in message

    workspace.write_params({"data": {"source": "mars", "root": str(root), "on_bad_frame": "skip"}})
    proc = workspace.run("ingest")
    stats = json.loads((workspace.path / "data/ingest/stats.json").read_text())
    total = stats["frames"]
    assert stats["bad_frames"] == 1 and victim.name in stats["bad_frame_examples"][0]
    assert stats["off_size_frames"] == total - 1
    assert f"warning: {total - 1} of {total} frames under {root} are not 128 x 256 pixels" in proc.stderr

    workspace.write_params({"data": {"source": "mars", "root": str(root), "strict_frame_size": True}})
    proc = workspace.run("ingest", check=False)
    assert proc.returncode == 2
    assert "is 32 x 64 pixels, not 128 x 256" in proc.stderr.strip().splitlines()[-1]
