"""The FAISS gallery, the queries and the search answer, as library calls (no pipeline run).

The end-to-end tests (gallery stage, `python -m pipeline search`, the served model and the
ONNX export on a trained tiny model) are in tests/test_search_e2e.py.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from psta.search import vectors
from psta.search.gallery import Gallery, GalleryError, gallery_tables, write_gallery
from psta.search.html import render_search_html
from psta.search.queries import QueryError, allowed_rows, camera_ids, folder_query
from psta.search.vectors import IndexConfig, build_index, search


def clustered(n: int, dim: int = 32, per_id: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // per_id, dim)).astype(np.float32)
    x = centres[np.arange(n) % len(centres)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    sims = q @ x.T
    if allowed is not None:
        sims[:, ~allowed] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def test_flat_index_is_the_exact_search_and_obeys_the_allowed_rows():
    x = clustered(500)
    q = x[:20] + 0.01
    config = IndexConfig(index="flat")
    index = build_index(x, config)
    sims, rows = search(index, config, q, 10)
    np.testing.assert_array_equal(rows, exact(x, q, 10))
    np.testing.assert_allclose(sims, np.take_along_axis(q @ x.T, rows, 1), rtol=1e-5)
    allowed = np.zeros(500, bool)
    allowed[::7] = True
    _, rows = search(index, config, q, 10, allowed)
    assert allowed[rows].all()
    np.testing.assert_array_equal(rows, exact(x, q, 10, allowed))
    # fewer allowed rows than k: the rest is -1 / -inf
    few = np.zeros(500, bool)
    few[[3, 400]] = True
    sims, rows = search(index, config, q[:1], 5, few)
    assert sorted(rows[0, :2]) == [3, 400] and (rows[0, 2:] == -1).all() and np.isinf(sims[0, 2:]).all()


def faiss_exact(index, q: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """FAISS's own exact search of a flat index (its selector for the allowed rows)."""
    import faiss

    if allowed is None:
        sims, rows = index.search(q, k)
    else:
        bitmap = np.packbits(allowed, bitorder="little")
        sims, rows = index.search(q, k, params=faiss.SearchParameters(sel=faiss.IDSelectorBitmap(bitmap)))
    return np.where(rows >= 0, sims, -np.inf), rows


def assert_same_answer(ours, theirs):
    np.testing.assert_array_equal(ours[1], theirs[1])
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=2e-6)


@pytest.mark.parametrize("n_queries", [1, 7, vectors.BLAS_MAX_QUERIES, vectors.BLAS_MAX_QUERIES + 1, 150])
def test_flat_search_answers_as_faiss_exact_search_with_and_without_filters(n_queries):
    x = clustered(3000, dim=64, per_id=10, seed=1)
    q = clustered(n_queries * 5, dim=64, per_id=5, seed=2)[::5]
    config = IndexConfig(index="flat")
    index = build_index(x, config)
    view = vectors.stored_vectors(index)  # the index's own memory, not a copy
    assert not view.flags.owndata and view.shape == x.shape and np.array_equal(view, x)
    assert_same_answer(search(index, config, q, 10), faiss_exact(index, q, 10))
    cameras = np.arange(len(x)) % 6 == 2  # --cameras: a sixth of the rows
    assert_same_answer(search(index, config, q, 10, cameras), faiss_exact(index, q, 10, cameras))
    few = np.zeros(len(x), bool)
    few[[5, 1717, 2999]] = True  # fewer allowed rows than k: -1 / -inf after them
    ours = search(index, config, q, 10, few)
    assert_same_answer(ours, faiss_exact(index, q, 10, few))
    assert (ours[1][:, 3:] == -1).all() and np.isneginf(ours[0][:, 3:]).all()
    small = build_index(x[:4], config)  # k beyond the gallery
    assert_same_answer(search(small, config, q, 6), faiss_exact(small, q, 6))


def test_flat_search_orders_ties_as_faiss_and_blocks_large_galleries(monkeypatch):
    x = np.concatenate([clustered(40, dim=16, per_id=4, seed=3)] * 3)  # every vector three times
    q = x[:5] + 0.01
    config = IndexConfig(index="flat")
    index = build_index(x, config)
    ours = search(index, config, q, 9)
    assert_same_answer(ours, faiss_exact(index, q, 9))
    assert ours[1][0, :3].tolist() == [80, 40, 0]  # equal similarities: the higher row first
    monkeypatch.setattr(vectors, "BLAS_BLOCK_SCORES", 2 * len(x))  # two queries' similarities at a time
    assert_same_answer(search(index, config, q, 9, np.arange(len(x)) % 2 == 0),
                       faiss_exact(index, q, 9, np.arange(len(x)) % 2 == 0))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_the_exact_neighbours_of_clustered_embeddings(kind):
    x = clustered(4000, dim=64, per_id=10)  # top-10 = an identity's other tracklets, as in re-ID
    q = x[::40] + 0.02
    config = IndexConfig(index=kind, ivf_nprobe=16, hnsw_ef_search=64)
    index = build_index(x, config)
    if kind == "ivf":
        assert index.nlist == 4000 // 39  # 4 sqrt(N) capped so k-means has 39 points per list
    _, rows = search(index, config, q, 10)
    truth = exact(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth)])
    assert recall >= 0.95
    allowed = np.arange(len(x)) % 2 == 0
    _, rows = search(index, config, q, 10, allowed)
    assert allowed[rows[rows >= 0]].all()


def small_index_tables(n_tracklets: int = 6):
    """An index-like (tracklets, frames) pair: 3 frames per tracklet, cameras 0 / 1 alternating."""
    tracklets = pd.DataFrame({
        "tracklet_id": np.arange(n_tracklets), "split": ["query", "gallery"] * (n_tracklets // 2),
        "pid": np.repeat(np.arange(1, n_tracklets // 2 + 1), 2), "label": -1,
        "camid": np.arange(n_tracklets) % 2, "n_frames": 3, "frame_offset": 3 * np.arange(n_tracklets),
        "name": [f"t{i}" for i in range(n_tracklets)],
    })
    frames = pd.DataFrame({"tracklet_id": np.repeat(np.arange(n_tracklets), 3),
                           "frame_idx": np.tile(np.arange(3), n_tracklets).astype(np.int32),
                           "path": [f"p/{t}_{f}.jpg" for t in range(n_tracklets) for f in range(3)]})
    return tracklets, frames


def test_gallery_round_trip_tables_and_damage(tmp_path):
    tracklets, frames = small_index_tables()
    rows = tracklets.iloc[[1, 2, 5]]
    sources = pd.DataFrame({"name": ["t2"], "camera": ["cam_a"], "video": ["cam_a.mp4"],
                            "video_frame_first": [11], "video_frame_last": [40], "start_s": [0.4], "end_s": [1.56]})
    table, gallery_frames = gallery_tables(rows, frames, sources)
    assert table["tracklet_id"].tolist() == [1, 2, 5] and table["frame_offset"].tolist() == [0, 3, 6]
    assert table["first_frame"].tolist() == ["p/1_0.jpg", "p/2_0.jpg", "p/5_0.jpg"]
    assert table["representative_frame"].tolist() == ["p/1_1.jpg", "p/2_1.jpg", "p/5_1.jpg"]
    assert table["camera"].tolist() == ["C2", "cam_a", "C2"] and table["video"].tolist() == [None, "cam_a.mp4", None]
    vectors = clustered(3, dim=8, per_id=1)
    header = write_gallery(tmp_path / "g", vectors, table, gallery_frames, IndexConfig(index="flat"),
                           {"model": {"sha256": "x"}})
    assert header["num_vectors"] == 3 and header["embedding_dim"] == 8 and header["model"] == {"sha256": "x"}

    gallery = Gallery.open(tmp_path / "g")
    np.testing.assert_allclose(gallery.vector(1), vectors[1], rtol=1e-6)
    assert [p.name for p in gallery.frame_paths(2, tmp_path)] == ["5_0.jpg", "5_1.jpg", "5_2.jpg"]
    assert gallery.table.loc[1, "start_s"] == 0.4 and gallery.table.loc[0, "pid"] == 1
    rows_found, distances = gallery.search(vectors[2], 2)
    assert rows_found[0] == 2 and distances[0] == pytest.approx(0.0, abs=1e-6)

    with open(tmp_path / "g" / "index.faiss", "ab") as f:
        f.write(b"x")
    with pytest.raises(GalleryError, match=r"gallery file .*index.faiss is missing or has the wrong size .*"
                                           r"rebuild it with `python -m pipeline gallery`"):
        Gallery.open(tmp_path / "g")
    with pytest.raises(GalleryError, match=r"is not a gallery \(no header.json\); build it with `python -m pipeline"):
        Gallery.open(tmp_path / "nowhere")


def test_same_person_is_the_calibrated_cosine_threshold_of_the_evaluation(tmp_path):
    from pipeline.model_info import read_threshold, verification_threshold
    from psta.search.results import ranked_results

    block = {"threshold": 0.25, "distance": "cosine", "target_fpr": 0.01}
    assert verification_threshold({"mars_official": {"mAP": 50.0, "verification": block}}, "mars_official") == 0.25
    assert verification_threshold({"mars_official": {"mAP": 50.0}}, "mars_official") is None  # not calibrated
    assert verification_threshold({"mars_official": {"verification": {**block, "distance": "euclidean"}}},
                                  "mars_official") is None  # another distance than the search's
    assert verification_threshold({"mars_official": {"verification": {**block, "threshold": float("nan")}}},
                                  "mars_official") is None
    assert verification_threshold({"duke_official": {"verification": block}}, "mars_official") is None
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"mars_official": {"mAP": 50.0, "verification": block}}))
    assert read_threshold(metrics, "mars_official") == 0.25 and read_threshold(tmp_path / "none.json", "x") is None

    tracklets, frames = small_index_tables()
    table, gallery_frames = gallery_tables(tracklets, frames)
    write_gallery(tmp_path / "g", clustered(6, dim=8, per_id=1), table, gallery_frames, IndexConfig(), {})
    gallery = Gallery.open(tmp_path / "g")
    rows, distances = np.array([3, 0, 4]), np.array([0.1, 0.25, 0.4])
    found = ranked_results(gallery, rows, distances, tmp_path, threshold=0.25)
    assert [r["same_person"] for r in found] == [True, True, False]  # distance <= threshold
    assert [r["tracklet_id"] for r in found] == [3, 0, 4] and [r["rank"] for r in found] == [1, 2, 3]
    assert [r["same_person"] for r in ranked_results(gallery, rows, distances, tmp_path, None)] == [None] * 3


def test_filters_cameras_exclusion_and_the_protocols_ignore_rule():
    tracklets, frames = small_index_tables()
    table, _ = gallery_tables(tracklets, frames)
    assert camera_ids(table, ["2"]) == {1} and camera_ids(table, ["C1", "c2"]) == {0, 1}
    with pytest.raises(QueryError, match=r"camera '7' is not in the gallery; its cameras are 1 \(C1\), 2 \(C2\)"):
        camera_ids(table, ["7"])
    assert allowed_rows(table, cameras={0}).tolist() == [True, False] * 3
    assert allowed_rows(table, exclude_camid=0).tolist() == [False, True] * 3
    # pid 2 is tracklets 2 (camera 0) and 3 (camera 1): a query of pid 2 in camera 0 ignores tracklet 2
    assert allowed_rows(table, ignore_pid_camid=(2, 0)).tolist() == [True, True, False, True, True, True]


def write_jpeg(path, value: int, size=(40, 20)):
    from torchvision.io import write_jpeg as write

    write(torch.full((3, *size), value, dtype=torch.uint8), str(path))


def test_folder_query_reads_crops_in_name_order_at_the_model_size(tmp_path):
    for name, value in (("b.jpg", 200), ("a.jpg", 10)):
        write_jpeg(tmp_path / name, value)
    (tmp_path / "notes.txt").write_text("not an image")
    frames, info = folder_query(tmp_path, 64, 32)
    assert frames.shape == (2, 3, 64, 32) and frames.dtype == torch.uint8
    assert frames[0].float().mean() < 30 < 180 < frames[1].float().mean()
    assert [p.split("/")[-1] for p in info["frames"]] == ["a.jpg", "b.jpg"]


def test_bad_folder_queries_are_one_clear_error(tmp_path):
    with pytest.raises(QueryError, match=r"query folder .*missing does not exist or is not a folder; pass a folder of "
                                         r"person crops"):
        folder_query(tmp_path / "missing", 64, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QueryError, match=r"query folder .*empty holds no images \(.jpg, .jpeg, .png, .bmp, .webp\); "
                                         r"put the person crops of one tracklet there"):
        folder_query(tmp_path / "empty", 64, 32)
    (tmp_path / "bad").mkdir()
    write_jpeg(tmp_path / "bad" / "a.jpg", 50)
    (tmp_path / "bad" / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(QueryError, match=r"cannot read query image .*b.jpg .*; replace it with a readable JPEG/PNG "
                                         r"crop or remove it from the folder"):
        folder_query(tmp_path / "bad", 64, 32)


def test_search_page_is_self_contained_and_colours_identities(tmp_path):
    frame = tmp_path / "f.jpg"
    write_jpeg(frame, 120)
    results = [{"rank": r, "tracklet_id": 10 + r, "pid": pid, "camid": 1, "camera": "C2", "distance": 0.1 * r,
                "same_person": None, "frames": [str(frame)] * 3, "name": f"n{r}", "split": "gallery"}
               for r, pid in ((1, 5), (2, 7))]
    document = {"query": {"type": "tracklet", "pid": 5, "camid": 0}, "results": results,
                "gallery": {"path": "data/gallery", "num_vectors": 2, "index": "flat", "sampling": "begin",
                            "model": {"sha256": "ab" * 32, "registered": "psta-mars/3"}, "threshold": None}}
    page = render_search_html(document, np.zeros((4, 64, 32, 3), np.uint8))
    assert re.findall(r'src="([^"]*)"', page) and all(s.startswith("data:image/png;base64,")
                                                      for s in re.findall(r'src="([^"]*)"', page))
    assert 'data-rank="1" data-tracklet="11"' in page and "0.2000" in page and "psta-mars/3" in page
    assert "none (not calibrated)" in page
    json.dumps(document)  # the document the page shows is what --json writes


def test_served_model_input_check_names_the_contract():
    from pipeline.pixel_model import check_frames

    ok = np.zeros((2, 4, 10, 6, 3), np.uint8)
    assert check_frames({"frames": ok}) is not None and check_frames(ok).shape == ok.shape
    for bad, got in ((ok.astype(np.float32), "dtype float32"), (ok[0], "shape (4, 10, 6, 3)"),
                     (ok[..., :1], "shape (2, 4, 10, 6, 1)"), (ok[:0], "empty shape (0, 4, 10, 6, 3)")):
        with pytest.raises(Exception, match=re.escape(f"expected uint8 RGB frames B x T x H x W x 3 "
                                                      f"(integers 0-255), got {got}")):
            check_frames(bad)
