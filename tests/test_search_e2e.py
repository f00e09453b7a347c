"""Search, serving and export end to end on the tiny synthetic demo, with the real tools.

One module-scoped project runs ingest -> index -> cache -> evaluate -> gallery as stage
processes, on a seeded untrained tiny PSTA written where the train stage writes its model
(training is not under test here; at random weights it already ranks 60% of the tiny demo's
queries right, which the tests need); the tests then search its gallery with
`python -m pipeline search` (in process where only the answer matters, as a process where the
command line itself is under test), serve the registered champion with `mlflow models serve`,
and export it to ONNX. A second project cuts PyAV-written camera videos into its gallery.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO, Workspace

pytestmark = pytest.mark.slow  # real stage processes, servers and exports

EVALUATE = {"evaluate": {"num_workers": 0, "untrained_baseline": False}}


def make_workspace(path: Path, prefect_api: str, override: dict) -> Workspace:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api,
           "MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}"}
    env.pop("PSTA_PARENT_RUN_ID", None)
    ws = Workspace(path, env)
    ws.write_params(override)
    return ws


def write_untrained_model(ws: Workspace, num_classes: int, seed: int = 0) -> None:
    from psta.integrity import write_digest
    from psta.model import build_model, save_checkpoint
    from tests.conftest import TINY_PARAMS

    m = TINY_PARAMS["model"]
    torch.manual_seed(seed)
    (ws.path / "data/models").mkdir(parents=True, exist_ok=True)
    write_digest(save_checkpoint(ws.path / "data/models/model.pt", build_model("psta", num_classes=num_classes, **m)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory, prefect_api) -> Workspace:
    from psta.index import read_index

    ws = make_workspace(tmp_path_factory.mktemp("search-demo"), prefect_api, EVALUATE)
    for stage in ("ingest", "index", "cache"):
        ws.run(stage)
    # seed 3: at these random weights rank-1 is 60% under the reference's recipe (seed 0: 0%)
    write_untrained_model(ws, read_index(ws.path / "data/index").num_classes, seed=3)
    for stage in ("evaluate", "gallery"):
        ws.run(stage)
    return ws


@contextlib.contextmanager
def inside(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def search(ws: Workspace, *argv: str) -> dict:
    """`python -m pipeline search ...` in this process (same code path as the command line)."""
    from pipeline.params import load_params
    from pipeline.search import build_parser, check_arguments, run_search

    with inside(ws.path):
        args = build_parser().parse_args(list(argv))
        check_arguments(args)
        return run_search(args, load_params("params.yaml"))[0]


def search_error(ws: Workspace, capsys, *argv: str) -> str:
    """The one error line of a refused search (exit status 2)."""
    from pipeline.__main__ import main

    with inside(ws.path):
        assert main(["search", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def eval_tables(ws: Workspace):
    tracklets = pd.read_parquet(ws.path / "data/eval/tracklets.parquet")
    ranked = pd.read_parquet(ws.path / "data/eval/ranked.parquet")
    results = json.loads((ws.path / "data/eval/results.json").read_text())
    return tracklets, ranked, results


def test_tracklet_search_top1_equals_the_evaluation_rank1(demo):
    tracklets, _, results = eval_tables(demo)
    official = results["protocols"]["mars_official"]
    queries = tracklets[tracklets["split"] == "query"]
    assert official["num_valid_queries"] == len(queries) > 0
    hits = []
    for q in queries.itertuples():
        document = search(demo, "--tracklet", str(q.tracklet_id), "--top-k", "5")
        assert document["query"]["in_gallery"] and document["query"]["pid"] == q.pid
        for r in document["results"]:  # the protocol's rule: same identity in the same camera is ignored
            assert not (r["pid"] == q.pid and r["camid"] == q.camid)
        assert [r["rank"] for r in document["results"]] == [1, 2, 3, 4, 5]
        assert np.all(np.diff([r["distance"] for r in document["results"]]) >= 0)
        hits.append(document["results"][0]["pid"] == q.pid)
    assert np.mean(hits) == official["rank1"]


def test_gallery_records_and_follows_the_evaluations_test_sampling(demo, tmp_path, prefect_api):
    """Dense sampling of at most one clip per tracklet, its window drawn from seed 5 (not the
    defaults 200 / 0): the gallery records them and holds exactly the evaluation's embeddings."""
    from psta.data.cache import FrameCache
    from psta.engine.inference import extract_features
    from psta.index import read_index
    from psta.model import load_checkpoint
    from psta.search.gallery import Gallery

    sampling = {"sampling": "dense", "max_clips": 1, "seed": 5}
    ws = make_workspace(tmp_path, prefect_api, {"evaluate": {**EVALUATE["evaluate"], **sampling}})
    shutil.copytree(demo.path / "data", ws.path / "data", ignore=shutil.ignore_patterns("eval", "gallery"))
    ws.run("evaluate")
    ws.run("gallery")
    gallery = Gallery.open(ws.path / "data/gallery")
    h = gallery.header
    assert (h["sampling"], h["max_clips"], h["sampling_seed"]) == ("dense", 1, 5)
    tracklets, _, _ = eval_tables(ws)
    features = np.load(ws.path / "data/eval/features.npy")
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    row_of = {int(t): i for i, t in enumerate(tracklets["tracklet_id"])}
    vectors = np.stack([gallery.vector(i) for i in range(len(gallery.table))])
    evaluated = features[[row_of[int(t)] for t in gallery.table["tracklet_id"]]]
    assert (vectors * evaluated).sum(axis=1).min() >= 0.9999
    # the values matter here: every clip (the defaults' 200) embeds the longer tracklets otherwise
    rows = read_index(ws.path / "data/index").tracklets.iloc[gallery.table["tracklet_id"]]
    model, _ = load_checkpoint(ws.path / "data/models/model.pt")
    every_clip = extract_features(model, rows, FrameCache(ws.path / "data/cache"), seq_len=h["model"]["seq_len"],
                                  sampling="dense", max_clips=0, precision=h["precision"], progress=False)
    every_clip /= np.linalg.norm(every_clip, axis=1, keepdims=True)
    assert (vectors * every_clip).sum(axis=1).min() < 0.9999


def test_folder_query_with_its_camera_finds_its_identity_in_other_cameras(demo, tmp_path):
    from psta.index import read_index

    tracklets, ranked, _ = eval_tables(demo)
    first = ranked[(ranked["protocol"] == "mars_official") & (ranked["rank"] == 1) & ranked["match"]]
    assert len(first), "the tiny model ranked no query's match first; train it longer"
    q = tracklets.set_index("tracklet_id").loc[int(first["query_tracklet_id"].iloc[0])]
    index = read_index(demo.path / "data/index")
    crops = tmp_path / "crops"
    crops.mkdir()
    for i, frame in enumerate(index.frame_paths(int(q.name))):
        shutil.copy(demo.path / "data/generated/mars" / frame, crops / f"{i:03d}.jpg")

    out_json, out_html = tmp_path / "answer.json", tmp_path / "answer.html"
    proc = demo.run("search", str(crops), "--camera", str(q.camid + 1), "--exclude-same-camera",
                    "--top-k", "5", "--json", str(out_json), "--html", str(out_html))
    assert "rank  distance" in proc.stdout
    document = json.loads(out_json.read_text())
    assert document["query"]["type"] == "folder" and document["query"]["camid"] == q.camid
    results = document["results"]
    metrics = json.loads((demo.path / "reports/metrics.json").read_text())
    threshold = metrics["mars_official"]["verification"]["threshold"]
    assert document["gallery"]["threshold"] == threshold
    assert results[0]["pid"] == q.pid
    assert all(r["camid"] != q.camid for r in results)
    for r in results:
        assert {"rank", "tracklet_id", "pid", "camid", "distance", "same_person", "frames"} <= set(r)
        assert isinstance(r["same_person"], bool)  # from the evaluation's calibrated threshold
        if abs(r["distance"] - threshold) > 1e-5:  # the JSON's distance is rounded to 6 digits
            assert r["same_person"] is (r["distance"] <= threshold)
        assert r["frames"] and all((demo.path / f).is_file() for f in r["frames"])
    # the crops embed as the gallery embedded that tracklet: the same answer as --tracklet
    same = search(demo, "--tracklet", str(q.name), "--exclude-same-camera", "--top-k", "5")
    assert [r["tracklet_id"] for r in same["results"]][:1] == [results[0]["tracklet_id"]]
    for a, b in zip(same["results"], results):
        assert a["distance"] == pytest.approx(b["distance"], abs=5e-3)

    page = out_html.read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 + len(results) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert page.count("<tr data-rank=") == len(results)


def test_cameras_and_exclude_same_camera_restrict_the_results(demo):
    tracklets, _, _ = eval_tables(demo)
    q = tracklets[tracklets["split"] == "query"].iloc[0]
    table = pd.read_parquet(demo.path / "data/gallery/tracklets.parquet")
    cameras = sorted(set(table["camid"]) - {q.camid})[:2]
    document = search(demo, "--tracklet", str(q.tracklet_id), "--top-k", "1000",
                      "--cameras", ",".join(str(c + 1) for c in cameras))
    assert {r["camid"] for r in document["results"]} == set(cameras)
    assert len(document["results"]) == table["camid"].isin(cameras).sum()  # all of them, nothing else
    document = search(demo, "--tracklet", str(q.tracklet_id), "--top-k", "1000", "--exclude-same-camera")
    assert len(document["results"]) == (table["camid"] != q.camid).sum()
    assert document["query"]["exclude_same_camera"] is True


def test_bad_queries_are_one_clear_error_each(demo, tmp_path, capsys):
    from psta.model import build_model, save_checkpoint

    (tmp_path / "empty").mkdir()
    assert re.fullmatch(r"error: query folder .*empty holds no images .*; put the person crops of one tracklet there",
                        search_error(demo, capsys, str(tmp_path / "empty")))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "0001.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    assert re.fullmatch(r"error: cannot read query image .*0001.jpg .*; replace it with a readable JPEG/PNG crop "
                        r"or remove it from the folder", search_error(demo, capsys, str(tmp_path / "broken")))
    assert search_error(demo, capsys, "--tracklet", "99999").startswith(
        "error: tracklet 99999 is not in the index data/index (tracklet ids 0..")
    assert search_error(demo, capsys, "--tracklet", "0", "--cameras", "9").startswith(
        "error: camera '9' is not in the gallery; its cameras are 1 (C1)")
    crops = tmp_path / "crops"
    crops.mkdir()
    frame = next((demo.path / "data/generated/mars/bbox_test").rglob("*.jpg"))
    shutil.copy(frame, crops / "a.jpg")
    assert search_error(demo, capsys, str(crops), "--exclude-same-camera") == (
        "error: --exclude-same-camera needs the query's camera: pass --camera C")

    # a model that is not the gallery's: retrained, or another checkpoint
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    header = json.loads((demo.path / "data/gallery/header.json").read_text())
    m = header["model"]
    save_checkpoint(other, build_model(m["arch"], num_classes=4, seq_len=m["seq_len"], height=m["height"],
                                       width=m["width"], backbone=m["backbone"]))
    message = search_error(demo, capsys, str(crops), "--model", str(other))
    assert message.startswith(f"error: gallery data/gallery was built by another model version ({m['registered']}, "
                              f"sha256 {m['sha256'][:12]}) than {other}")
    assert message.endswith("rebuild the gallery with `python -m pipeline gallery` (or `dvc repro gallery`), or "
                            "pass the gallery's checkpoint with --model")
    assert search_error(demo, capsys, "--tracklet", "0", "--gallery", str(tmp_path / "none")).startswith(
        f"error: {tmp_path / 'none'} is not a gallery (no header.json)")


def test_gallery_under_torchrun_equals_the_single_process_gallery(demo, tmp_path):
    from psta.search.gallery import Gallery

    single = tmp_path / "single"
    shutil.copytree(demo.path / "data/gallery", single)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "pipeline", "gallery"],
                          cwd=demo.path, env=demo.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = Gallery.open(single), Gallery.open(demo.path / "data/gallery")
    assert a.table.equals(b.table)
    va = np.stack([a.vector(i) for i in range(len(a.table))])
    vb = np.stack([b.vector(i) for i in range(len(b.table))])
    assert (va * vb).sum(axis=1).min() >= 0.9999


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_served_champion_embeds_raw_frames_as_the_evaluation(demo, tmp_path):
    import mlflow
    from torchvision.io import decode_image

    from pipeline.model_info import model_sha256
    from pipeline.servers import model_server
    from psta.data.sampling import begin_interval_indices
    from psta.index import read_index

    tracklets, _, _ = eval_tables(demo)
    features = np.load(demo.path / "data/eval/features.npy")
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    index = read_index(demo.path / "data/index")
    seq_len = json.loads((demo.path / "data/gallery/header.json").read_text())["model"]["seq_len"]
    row = int(np.flatnonzero(tracklets["n_frames"].to_numpy() > seq_len)[0])
    tid = int(tracklets["tracklet_id"].iloc[row])
    frames = np.stack([decode_image(str(demo.path / "data/generated/mars" / p)).permute(1, 2, 0).numpy()
                       for p in index.frame_paths(tid)])

    client = mlflow.MlflowClient(demo.env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias("psta-synthetic-mars", "champion")
    metrics = json.loads((demo.path / "reports/metrics.json").read_text())
    threshold = metrics["mars_official"]["verification"]["threshold"]
    assert version.tags["training_data"] == "synthetic-mars"
    assert float(version.tags["verification_threshold"]) == threshold
    assert version.tags["verification_distance"] == "cosine"
    assert version.tags["model_sha256"] == model_sha256(demo.path / "data/models/model.pt")
    assert "Input: uint8 RGB frames B x T x H x W x 3" in version.description

    uri = "models:/psta-synthetic-mars@champion"
    with model_server(uri, demo.env["MLFLOW_TRACKING_URI"], tmp_path / "serve.log") as url:
        clip = frames[begin_interval_indices(len(frames), seq_len)]
        status, answer = post(url, {"inputs": clip[None].tolist()})
        assert status == 200, answer
        embedding = np.asarray(answer["predictions"], np.float32)
        assert embedding.shape == (1, features.shape[1])
        assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
        assert float(embedding[0] @ features[row]) >= 0.999
        # the whole tracklet: the evaluation's sampling happens inside
        status, answer = post(url, {"inputs": frames[None].tolist()})
        assert status == 200 and float(np.asarray(answer["predictions"])[0] @ features[row]) >= 0.999

        status, answer = post(url, {"inputs": clip.tolist()})  # one clip without its batch axis
        assert status == 400 and len(answer["message"]) < 1000
        assert "Shape of input (4, 64, 32, 3) does not match expected shape (-1, -1, -1, -1, 3)" in answer["message"]
        status, answer = post(url, {"inputs": (clip[None].astype(np.int64) * 4).tolist()})  # not uint8
        assert status == 400 and len(answer["message"]) < 300 and "out of bounds for uint8" in answer["message"]


def test_onnx_export_matches_pytorch_and_is_logged_to_the_model_version(demo):
    import mlflow

    from psta.export import ExportError, check_parity, onnx_session, relative_difference
    from psta.model import build_model, load_checkpoint

    demo.run("export")
    onnx_path = demo.path / "data/export/psta.onnx"
    parity = json.loads((demo.path / "data/export/parity.json").read_text())
    assert parity["max_rel_diff"] <= 1e-4
    model, checkpoint = load_checkpoint(demo.path / "data/models/model.pt")
    c = checkpoint["config"]
    session = onnx_session(onnx_path)
    (spec,) = session.get_inputs()
    assert spec.shape[1:] == [c["seq_len"], 3, c["height"], c["width"]] and not isinstance(spec.shape[0], int)
    clips = torch.randn(5, c["seq_len"], 3, c["height"], c["width"])  # another batch size than exported
    with torch.no_grad():
        want = model(clips).numpy()
    assert relative_difference(session.run(None, {"clips": clips.numpy()})[0], want) <= 1e-4

    client = mlflow.MlflowClient(demo.env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias("psta-synthetic-mars", "champion")
    assert float(version.tags["onnx_max_rel_diff"]) == pytest.approx(parity["max_rel_diff"], rel=1e-2)
    assert [a.path for a in client.list_artifacts(version.run_id, "onnx")] == ["onnx/psta.onnx"]

    torch.manual_seed(11)  # another model than the demo's (seed 3)
    other = build_model(c["arch"], num_classes=4, seq_len=c["seq_len"], height=c["height"], width=c["width"],
                        backbone=c["backbone"])
    with pytest.raises(ExportError, match=r"ONNX Runtime differs from PyTorch by .* more than 0.0001; the export is "
                                          r"not kept"):
        check_parity(onnx_path, other, clips[:2])


@pytest.fixture(scope="module")
def cameras(tmp_path_factory, prefect_api) -> Workspace:
    """A gallery cut from PyAV-written camera videos, embedded by a seeded untrained PSTA: the
    identities there differ by colour, which a random network already separates."""
    from tests.test_videos import CFG, make_source

    path = tmp_path_factory.mktemp("search-videos")
    src = make_source(path / "cameras")
    ws = make_workspace(path, prefect_api, {"data": {"source": "videos", "root": str(src)}, "videos": CFG.to_dict()})
    for stage in ("ingest", "index", "cache"):
        ws.run(stage)
    write_untrained_model(ws, num_classes=3, seed=3)  # seed 0 separates 2 of 13 cam_a tracks, seed 3 all
    ws.run("gallery")
    return ws


def test_video_track_query_finds_its_identity_in_the_other_cameras(cameras):
    table = pd.read_parquet(cameras.path / "data/gallery/tracklets.parquet")
    assert set(table["split"]) == {"train", "query", "gallery"}  # a videos gallery: every tracklet
    assert set(table["camera"]) == {"cam_a", "cam_b", "cam_c"} and table["video"].notna().all()
    for track, pid in ((1, 1), (3, 3)):  # track ids name the identity (no identities.csv)
        document = search(cameras, str(cameras.path / "cameras/cam_a.mp4"), "--track", str(track),
                          "--exclude-same-camera", "--top-k", "3")
        query = document["query"]
        assert query["type"] == "video" and query["camera"] == "cam_a"  # the video names its camera
        assert query["start_s"] == pytest.approx((query["video_frame_first"] - 1) / 25)  # 25 fps videos
        top = document["results"][0]
        assert top["pid"] == pid and top["camera"] != "cam_a"
        assert top["video"] in ("cam_b.avi", "cam_c.mkv") and top["end_s"] > top["start_s"] >= 0


def test_bad_video_queries_are_one_clear_error_each(cameras, capsys):
    video = str(cameras.path / "cameras/cam_a.mp4")
    assert search_error(cameras, capsys, video, "--track", "77") == (
        f"error: track id 77 is not in box file {cameras.path / 'cameras/cam_a.txt'} (its track ids: 1, 2, 3, 4, 9); "
        "pass one of those with --track")
    assert search_error(cameras, capsys, video) == (
        f"error: {video} is a video: say which person with --track ID (a track id of its box file)")
    assert search_error(cameras, capsys, video, "--track", "1", "--boxes", "missing.txt").startswith(
        "error: query box file missing.txt does not exist")
