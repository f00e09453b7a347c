"""`python -m pipeline search`: find a person of one camera in the gallery (data/gallery/).

The query is a folder of person crops (one tracklet), a video + its MOTChallenge box file + a
track id, or a tracklet of the index (`--tracklet ID`: its identity and camera are known, so
the evaluation protocol's rule applies and the gallery tracklets of the same identity in the
same camera are ignored). The query is embedded exactly as the gallery stage embedded the
gallery (same model, test sampling, precision), and the nearest tracklets are printed, and
written as JSON (`--json`) and as a self-contained HTML page (`--html`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import paths
from pipeline.model_info import model_sha256
from psta.atomic import write_text_atomic
from psta.search.gallery import Gallery, GalleryError
from psta.search.queries import IMAGE_EXTENSIONS, QueryError, allowed_rows, camera_ids


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="?", type=Path,
                   help="a folder of person crops of one tracklet, or a video (with --track)")
    p.add_argument("--camera", help="the query's camera: its number as the dataset writes it (1-based) or, "
                                    "for video sources, the video's name")
    p.add_argument("--boxes", type=Path, help="the video's MOTChallenge box file (default: <video>.txt)")
    p.add_argument("--track", type=int, help="the person's track id in the box file")
    p.add_argument("--tracklet", type=int, help="a tracklet id of the index as the query")
    p.add_argument("--top-k", type=int, default=10, help="results to return (default: %(default)s)")
    p.add_argument("--cameras", help="search only these cameras (comma-separated numbers or names)")
    p.add_argument("--exclude-same-camera", action="store_true", help="skip the query camera's tracklets")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--html", type=Path, help="write the results as a self-contained HTML page here")
    p.add_argument("--gallery", type=Path, default=paths.GALLERY, help="gallery folder (default: %(default)s)")
    p.add_argument("--model", type=Path, default=paths.MODELS / "model.pt",
                   help="the checkpoint the gallery was built with (default: %(default)s)")
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    return p


def check_arguments(args: argparse.Namespace) -> None:
    if (args.query is None) == (args.tracklet is None):
        raise QueryError("give one query: a folder of crops, a video with --track, or --tracklet ID")
    if args.top_k < 1:
        raise QueryError(f"--top-k must be at least 1, got {args.top_k}")
    if args.query is not None and args.query.is_file():
        if args.query.suffix.lower() in IMAGE_EXTENSIONS:
            raise QueryError(f"{args.query} is one image: put the crops of the person's tracklet in a folder and "
                             "pass the folder")
        if args.track is None:
            raise QueryError(f"{args.query} is a video: say which person with --track ID (a track id of its box file)")
    if args.tracklet is not None and args.camera is not None:
        raise QueryError("--camera is for a folder or video query; a --tracklet's camera is known")
    if args.exclude_same_camera and args.camera is None and args.query is not None and args.query.is_dir():
        raise QueryError("--exclude-same-camera needs the query's camera: pass --camera C")


def load_model(gallery: Gallery, path: Path):
    """The gallery's model: the checkpoint at ``path`` if it is the one that built the gallery."""
    from psta.model import load_checkpoint

    built = gallery.header["model"]
    if not path.is_file():
        raise QueryError(f"model checkpoint {path} not found; pass the checkpoint that built the gallery with --model")
    sha = model_sha256(path)
    if sha != built["sha256"]:
        name = built.get("registered") or built["sha256"][:12]
        raise GalleryError(f"gallery {gallery.path} was built by another model version ({name}, "
                           f"sha256 {built['sha256'][:12]}) than {path} (sha256 {sha[:12]}); rebuild the "
                           "gallery with `python -m pipeline gallery` (or `dvc repro gallery`), or pass the "
                           "gallery's checkpoint with --model")
    return load_checkpoint(path)[0]


def gallery_sampling(gallery: Gallery) -> dict:
    """The test sampling the gallery was embedded with (a gallery written before max_clips / seed
    were recorded used extract_features' defaults, 200 / 0)."""
    h = gallery.header
    return {"sampling": h["sampling"], "max_clips": h.get("max_clips", 200), "seed": h.get("sampling_seed", 0)}


def embed(model, gallery: Gallery, frames: torch.Tensor, batch_size: int) -> np.ndarray:
    from psta.search.frames import embed_frame_sets

    h = gallery.header
    m = h["model"]
    return embed_frame_sets(model, [frames], seq_len=m["seq_len"], height=m["height"], width=m["width"],
                            **gallery_sampling(gallery), batch_size=batch_size, precision=h["precision"])[0]


def tracklet_query(args, gallery: Gallery):
    """(vector, frames, description) of --tracklet ID: its gallery vector, or embedded from the
    frame cache exactly as the evaluation embeds it when the gallery does not hold it."""
    from psta.data.cache import FrameCache
    from psta.index import read_index

    t = read_index(paths.INDEX).tracklets
    if not 0 <= args.tracklet < len(t):
        raise QueryError(f"tracklet {args.tracklet} is not in the index {paths.INDEX} (tracklet ids 0..{len(t) - 1})")
    rec = t.iloc[args.tracklet]
    cache = FrameCache(paths.CACHE)
    hit = np.flatnonzero(gallery.table["tracklet_id"].to_numpy() == args.tracklet)
    if len(hit):
        vector = gallery.vector(int(hit[0]))
    else:
        vector = embed_cached(load_model(gallery, args.model), gallery, t.iloc[[args.tracklet]], cache)
    frames = cache.read(args.tracklet, np.arange(int(rec["n_frames"]))) if args.html else None
    info = {"type": "tracklet", "tracklet_id": int(args.tracklet), "name": str(rec["name"]),
            "split": str(rec["split"]), "pid": int(rec["pid"]), "camid": int(rec["camid"]),
            "camera": f"C{int(rec['camid']) + 1}", "num_frames": int(rec["n_frames"]), "in_gallery": bool(len(hit))}
    return vector, frames, info


def embed_cached(model, gallery: Gallery, rows, cache) -> np.ndarray:
    from psta.engine.inference import extract_features
    from psta.search.frames import l2_normalise

    h = gallery.header
    features = extract_features(model, rows, cache, seq_len=h["model"]["seq_len"], **gallery_sampling(gallery),
                                batch_size=h.get("batch_size", 32), precision=h["precision"], progress=False)
    return l2_normalise(features)[0]


def media_query(args, gallery: Gallery, params):
    """(vector, frames, description) of a folder or video query."""
    from psta.search.queries import folder_query, video_query

    m = gallery.header["model"]
    if args.query.is_dir() or not args.query.exists():
        frames, info = folder_query(args.query, m["height"], m["width"])
    else:
        v = params.videos
        frames, info = video_query(args.query, args.boxes or args.query.with_suffix(".txt"), args.track,
                                   m["height"], m["width"], crop_height=v.height, crop_width=v.width,
                                   frame_stride=v.frame_stride, interpolation=v.interpolation,
                                   skip_zero_conf=v.skip_zero_conf, decode_batch=v.decode_batch)
    camera = args.camera
    names = set(gallery.table["camera"].str.lower())
    if camera is None and info["type"] == "video" and args.query.stem.lower() in names:
        camera = args.query.stem  # a camera of a videos-source gallery names itself
    if camera is not None:
        (camid,) = camera_ids(gallery.table, [camera])
        info.update(camid=camid, camera=str(gallery.table.loc[gallery.table.camid == camid, "camera"].iat[0]))
    vector = embed(load_model(gallery, args.model), gallery, frames, gallery.header.get("batch_size", 32))
    return vector, frames, info


def run_search(args, params) -> tuple[dict[str, Any], torch.Tensor]:
    from psta.search.results import gallery_summary, ranked_results

    gallery = Gallery.open(args.gallery)
    root = Path(gallery.header["root"])
    if args.tracklet is not None:
        vector, frames, query = tracklet_query(args, gallery)
        ignore = (query["pid"], query["camid"])
    else:
        vector, frames, query = media_query(args, gallery, params)
        ignore = None
    if args.exclude_same_camera and "camid" not in query:
        raise QueryError("--exclude-same-camera needs the query's camera: pass --camera C")
    cameras = camera_ids(gallery.table, args.cameras.split(",")) if args.cameras else None
    allowed = allowed_rows(gallery.table, cameras=cameras, ignore_pid_camid=ignore,
                           exclude_camid=query["camid"] if args.exclude_same_camera else None)
    if not allowed.any():
        raise QueryError("no gallery tracklet is left to search after --cameras / --exclude-same-camera "
                         "(and the ignore rule of a --tracklet query); widen the cameras")
    rows, distances = gallery.search(vector, min(args.top_k, int(allowed.sum())), allowed)
    query.update(top_k=args.top_k, cameras=sorted(int(c) for c in cameras) if cameras else None,
                 exclude_same_camera=bool(args.exclude_same_camera))
    document = {"query": query,
                "results": ranked_results(gallery, rows, distances, root, gallery.header.get("threshold")),
                "gallery": gallery_summary(gallery)}
    return document, frames


def print_results(document: dict[str, Any]) -> None:
    print(f"{'rank':>4}  {'distance':>8}  {'same':>4}  {'pid':>6}  {'camera':>8}  {'tracklet':>8}  name")
    for r in document["results"]:
        same = "-" if r["same_person"] is None else ("yes" if r["same_person"] else "no")
        pid = "-" if r["pid"] is None else r["pid"]
        print(f"{r['rank']:>4}  {r['distance']:>8.4f}  {same:>4}  {pid:>6}  {r['camera']:>8}  "
              f"{r['tracklet_id']:>8}  {r['name']}")


def search_command(argv: list[str]) -> int:
    from pipeline.params import load_params
    from psta.search.html import render_search_html

    args = build_parser().parse_args(argv)
    check_arguments(args)
    params = load_params(args.params)
    document, frames = run_search(args, params)
    print_results(document)
    if args.json:
        write_text_atomic(args.json, json.dumps(document, indent=2) + "\n")
    if args.html:
        write_text_atomic(args.html, render_search_html(document, frames.permute(0, 2, 3, 1).numpy()))
    return 0
