"""The run report (psta.report): real inputs from a tiny synthetic MARS, real evaluation outputs,
a self-contained HTML file checked by parsing and (slow) by headless Chromium."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from psta.data.cache import FrameCache, build_frame_cache
from psta.data.synthetic import SyntheticConfig, generate_mars
from psta.evaluation import evaluate_protocol, pairwise_distance, protocol_split
from psta.evaluation.outputs import write_eval_outputs, write_metrics
from psta.index import index_from_manifest, ingest
from psta.report import MATCH_COLOR, MISS_COLOR, QUERY_COLOR, ReportInputError, build_report, paper_table, strip_layout

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ("mars_official", "mars_torchreid")
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TILE_HEIGHT = 112   # build_report's default
PLOTS = ["cmc.png", "roc.png", "distances.png", "ap_hist.png", "embedding.png", "training.png"]
MODEL = {"arch": "psta", "backbone": "resnet18", "height": 64, "width": 32, "seq_len": 4,
         "pretrained": "none", "epochs": 12, "precision": "auto (bf16)", "train_identities": 3,
         "val_identities": 1}
PROVENANCE = {"date": "2026-01-02 03:04 UTC", "git_commit": "0123456789abcdef0123", "params_hash": "feedbeef",
              "mlflow_run_id": "a1b2c3d4e5"}


# --------------------------------------------------------------------------- fixtures

def pid_features(tracklets: pd.DataFrame, noise: float, seed: int, dim: int = 16) -> np.ndarray:
    """One random direction per identity plus noise: most queries match, some do not."""
    rng = np.random.default_rng(seed)
    pids = tracklets["pid"].to_numpy()
    centre = {p: rng.normal(size=dim) for p in np.unique(pids)}
    base = np.stack([centre[p] if p > 0 else rng.normal(size=dim) for p in pids])
    return (base + noise * rng.normal(size=base.shape)).astype(np.float32)


def write_history(path: Path, epochs: int = 12) -> pd.DataFrame:
    e = np.arange(epochs)
    h = pd.DataFrame({
        "epoch": e, "lr": 3.5e-4 * np.minimum(1.0, 0.01 + e / 5) * np.where(e >= 9, 0.3, 1.0),
        "loss_ce": 5 * np.exp(-e / 4) + 1, "loss_triplet": 0.4 * np.exp(-e / 3) + 0.05,
        "clips_per_s": 40.0 + e,
    })
    h["loss_total"] = h["loss_ce"] + h["loss_triplet"]
    h["val_rank1"] = np.where(e % 4 == 3, 0.9 - 0.6 * np.exp(-e / 4), np.nan)
    h["val_mAP"] = np.where(e % 4 == 3, 0.8 - 0.6 * np.exp(-e / 4), np.nan)
    h.to_csv(path, index=False)
    return h


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Synthetic MARS -> index -> raw frame cache -> evaluation outputs -> history / metrics."""
    tmp = tmp_path_factory.mktemp("report_inputs")
    root = tmp / "raw"
    generate_mars(root, SyntheticConfig(num_train_ids=4, num_test_ids=6, min_len=4, max_len=10,
                                        height=64, width=32, num_distractor_tracklets=2,
                                        num_junk_tracklets=1))
    ingest("mars", root, tmp / "manifest.parquet")
    index = index_from_manifest(tmp / "manifest.parquet", tmp / "index")
    build_frame_cache(index.frames, root, tmp / "cache", 64, 32, format="raw", progress=False)

    test = index.tracklets[index.tracklets["split"] != "train"].reset_index(drop=True)
    feats = pid_features(test, noise=1.0, seed=0)
    untrained_feats = np.random.default_rng(1).normal(size=feats.shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gallery smaller than max_rank at this scale
        results = {n: evaluate_protocol(n, feats, test, topk=10, max_rank=10) for n in PROTOCOLS}
        untrained = {n: evaluate_protocol(n, untrained_feats, test, topk=10, max_rank=10) for n in PROTOCOLS}
    reports = tmp / "reports"
    summary = write_eval_outputs(tmp / "eval", test, feats, results, untrained, dataset="mars",
                                 sampling="begin", metric="cosine", rerank=False, model=MODEL,
                                 provenance=PROVENANCE)
    write_metrics(summary, reports / "metrics.json", reports / "cmc.csv")
    write_history(reports / "train_history.csv")
    return {"tmp": tmp, "root": root, "index": tmp / "index", "cache": tmp / "cache",
            "eval": tmp / "eval", "reports": reports, "results": results, "untrained": untrained,
            "test": test, "summary": summary, "feats": feats}


@pytest.fixture(scope="module")
def report(inputs) -> dict:
    r = inputs["reports"]
    out = build_report(inputs["eval"], inputs["index"], inputs["cache"], r / "train_history.csv",
                       r / "metrics.json", r / "report.html", r / "report.md", num_examples=3)
    html_text = Path(out["html"]).read_text(encoding="utf-8")
    md_text = Path(out["md"]).read_text(encoding="utf-8")
    return {**out, "html_text": html_text, "md_text": md_text, "parsed": parse_html(html_text)}


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_html(text: str) -> _Collector:
    c = _Collector()
    c.feed(text)
    return c


def decode_data_uri(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,"), src[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


# --------------------------------------------------------------------------- HTML content

def test_report_files_and_summary(report):
    assert Path(report["html"]).is_file() and Path(report["md"]).is_file()
    # the plots + 3 best + 3 worst ranked lists
    assert report["num_figures"] == len(PLOTS) + 6
    assert report["figures"][:len(PLOTS)] == PLOTS
    assert len(report["examples"]["best"]) == 3 and len(report["examples"]["worst"]) == 3
    assert not set(report["examples"]["best"]) & set(report["examples"]["worst"])
    assert report["missing"] == {}
    assert report["html_bytes"] == Path(report["html"]).stat().st_size
    assert report["protocol_shown"] == "mars_official"
    # no temporary files left behind by the atomic writes
    assert not [p for p in Path(report["html"]).parent.iterdir() if p.name.startswith(".")]


def test_html_is_self_contained(report):
    text, parsed = report["html_text"], report["parsed"]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "@import" not in text and "url(" not in text
    assert not [a for t, a in parsed.tags if t in ("script", "link", "iframe", "object", "embed")]
    imgs = [a for t, a in parsed.tags if t == "img"]
    assert len(imgs) == report["num_figures"]
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        assert decode_data_uri(a["src"]).shape[0] > 10
    links = [a.get("href", "") for t, a in parsed.tags if t == "a"]
    assert all(h.startswith("#") for h in links)
    cmc = [a for a in imgs if a.get("id") == "cmc-plot"]
    assert len(cmc) == 1 and cmc[0]["alt"] == "CMC curve"


def test_html_has_paper_and_our_numbers(report, inputs):
    text = report["html_text"]
    table = report["parsed"].tables["results-table"]
    header, rows = table[0], table[1:]
    r1, mAP = header.index("Rank-1 (%)"), header.index("mAP (%)")
    paper = [r for r in rows if r[0].startswith("PSTA paper")]
    assert paper and paper[0][r1] == "91.5" and paper[0][mAP] == "85.8" and paper[0][2] == "mars_official"
    for name in PROTOCOLS:
        ours = [r for r in rows if r[0] == "Ours, trained" and r[2] == name]
        assert ours[0][r1] == pct(inputs["results"][name]["rank1"])
        assert ours[0][mAP] == pct(inputs["results"][name]["mAP"])
        base = [r for r in rows if r[0].startswith("Ours, untrained") and r[2] == name]
        assert base[0][r1] == pct(inputs["untrained"][name]["rank1"])
        assert base[0][mAP] == pct(inputs["untrained"][name]["mAP"])
    # the full paper table, both datasets
    paper_table = report["parsed"].tables["paper-table"]
    flat = [c for row in paper_table for c in row]
    for v in ("91.5", "85.8", "98.3", "97.7"):
        assert v in flat
    assert "MARS" in text and "DukeMTMC-VideoReID" in text
    # how the paper's number was chosen (best test-set epoch) and how ours is
    assert "is epoch 350 of 500), a model chosen on the test set" in text
    assert "never looks at the test set to choose" in text


def test_per_camera_table(report, inputs):
    table = report["parsed"].tables["camera-table"]
    header, rows = table[0], table[1:]
    per_cam = inputs["results"]["mars_official"]["per_camera"]
    # cameras as the file names write them: camid 0 is C1
    assert [r[0] for r in rows] == [f"C{c + 1}" for c in sorted(per_cam)]
    c_r1 = header.index("Rank-1 (%) mars_official")
    c_map = header.index("mAP (%) mars_official")
    for row in rows:
        m = per_cam[int(row[0][1:]) - 1]
        assert row[1] == str(m["num_queries"])
        assert row[c_r1] == (pct(m["rank1"]) if np.isfinite(m["rank1"]) else "–")
        assert row[c_map] == (pct(m["mAP"]) if np.isfinite(m["mAP"]) else "–")


def test_dataset_statistics(report, inputs):
    stats = json.loads((inputs["index"] / "stats.json").read_text())
    rows = {r[0]: r for r in report["parsed"].tables["dataset-table"][1:]}
    for split in ("train", "query", "gallery"):
        s = stats["splits"][split]
        assert rows[split][1:] == [str(s["tracklets"]), str(s["identities"]), str(s["frames"])]
    assert "Junk tracklets dropped" in report["html_text"]
    assert "Distractor tracklets" in report["html_text"]


def strip_boxes(img_attrs: dict, n_frames: int, tile_w: int):
    """The tile layout of one ranked-list picture, from its data-ranks attribute."""
    ranks = [int(r) for r in img_attrs["data-ranks"].split(",")]
    breaks = [i for i in range(1, len(ranks)) if ranks[i] != ranks[i - 1] + 1]
    return ranks, strip_layout(min(3, n_frames), len(ranks), TILE_HEIGHT, tile_w, breaks)


def check_strip_colours(img: np.ndarray, lay, matches: list[bool]) -> dict[str, int]:
    colours = {"green": 0, "red": 0}
    assert img.shape == (lay.height, lay.width, 3)
    for x0, y0, _, _ in lay.query_boxes:
        assert tuple(img[y0 + 1, x0 + 1]) == QUERY_COLOR
    for match, (x0, y0, x1, y1) in zip(matches, lay.gallery_boxes):
        want = MATCH_COLOR if match else MISS_COLOR
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        # all four sides of the frame, and the frame's inside is the picture, not the colour
        for y, x in ((y0, cx), (y1 - 1, cx), (cy, x0), (cy, x1 - 1), (y0 + 1, x0 + 1)):
            assert tuple(img[y, x]) == want, (match, (y, x))
        inner = img[y0 + 6:y1 - 6, x0 + 6:x1 - 6].reshape(-1, 3)
        assert (np.abs(inner.astype(int) - want).sum(1) > 30).mean() > 0.5
        colours["green" if match else "red"] += 1
    return colours


def test_ranked_lists_framed_green_and_red(report, inputs):
    ranked = pd.read_parquet(inputs["eval"] / "ranked.parquet")
    ranked = ranked[ranked["protocol"] == "mars_official"]
    imgs = [a for t, a in report["parsed"].tags if t == "img" and "data-query" in a]
    assert len(imgs) == 6
    per_q = ranked.groupby("query_tracklet_id")[["query_ap", "query_margin"]].first()
    best = [int(a["data-query"]) for a in imgs if a["data-kind"] == "best"]
    worst = [int(a["data-query"]) for a in imgs if a["data-kind"] == "worst"]
    # best: the largest margins between the closest non-match and the closest match
    assert per_q.loc[best, "query_margin"].is_monotonic_decreasing
    assert per_q.loc[best, "query_margin"].min() >= per_q["query_margin"].drop(best).max()
    others = per_q.drop(best).drop(worst)
    if len(others):
        assert per_q.loc[worst, "query_ap"].max() <= others["query_ap"].min()   # the worst of the rest
    assert per_q.loc[worst[0], "query_ap"] == per_q["query_ap"].drop(best).min()

    frame_h, frame_w = FrameCache(inputs["cache"]).height, FrameCache(inputs["cache"]).width
    tile_w = round(TILE_HEIGHT * frame_w / frame_h)
    colours = {"green": 0, "red": 0}
    for a in imgs:
        q = int(a["data-query"])
        rows = ranked[ranked["query_tracklet_id"] == q].sort_values("rank")
        n_frames = int(inputs["test"].set_index("tracklet_id").loc[q, "n_frames"])
        ranks, lay = strip_boxes(a, n_frames, tile_w)
        assert ranks == rows["rank"].tolist()   # the first match is in every top-10 here
        for k, v in check_strip_colours(decode_data_uri(a["src"]), lay, rows["match"].tolist()).items():
            colours[k] += v
    assert colours["green"] > 0 and colours["red"] > 0
    # the best query's top match is a match, the worst query's is not
    first = {int(a["data-query"]): a["data-matches"][0] for a in imgs}
    assert first[best[0]] == "1" and first[worst[0]] == "0"


def test_worst_queries_show_their_first_match_beyond_the_list(inputs, tmp_path):
    """With ranked lists shorter than the first match's rank, the strip appends that match
    (green, after a gap, labelled with its rank)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {n: evaluate_protocol(n, inputs["feats"], inputs["test"], topk=2, max_rank=10)
                   for n in PROTOCOLS}
    write_eval_outputs(tmp_path / "eval", inputs["test"], inputs["feats"], results, dataset="mars")
    out = build_report(tmp_path / "eval", inputs["index"], inputs["cache"], None, None,
                       tmp_path / "report.html", tmp_path / "report.md", num_examples=2)
    parsed = parse_html(Path(out["html"]).read_text(encoding="utf-8"))
    worst = [a for t, a in parsed.tags if t == "img" and a.get("data-kind") == "worst"]
    res = results["mars_official"]
    first_rank = dict(zip(res["query_tracklet_ids"].tolist(), res["first_match_rank"].tolist()))
    first_id = dict(zip(res["query_tracklet_ids"].tolist(), res["first_match_tracklet_ids"].tolist()))
    beyond = [a for a in worst if first_rank[int(a["data-query"])] > 2]
    assert beyond, "the fixture has a worst query whose first match is below rank 2"
    frame_h, frame_w = FrameCache(inputs["cache"]).height, FrameCache(inputs["cache"]).width
    for a in beyond:
        q = int(a["data-query"])
        n_frames = int(inputs["test"].set_index("tracklet_id").loc[q, "n_frames"])
        ranks, lay = strip_boxes(a, n_frames, round(TILE_HEIGHT * frame_w / frame_h))
        assert ranks == [1, 2, first_rank[q]] and a["data-matches"] == "001"
        gap = lay.gallery_boxes[2][0] - lay.gallery_boxes[1][2]
        assert gap > 20 if first_rank[q] > 3 else gap < 10   # a gap unless it is rank 3
        check_strip_colours(decode_data_uri(a["src"]), lay, [False, False, True])
        assert first_id[q] >= 0


# --------------------------------------------------------------------------- Markdown

def test_markdown_lists_the_same_numbers(report, inputs):
    md = report["md_text"]
    fig_dir = Path(report["figures_dir"])
    assert fig_dir == Path(report["md"]).parent / "figures"
    for name in report["figures"]:
        assert f"](figures/{name})" in md
        png = Image.open(fig_dir / name)
        assert png.format == "PNG" and png.size[0] > 100
    assert "91.5" in md and "85.8" in md and "98.3" in md and "97.7" in md
    for name in PROTOCOLS:
        r = inputs["results"][name]
        row = next(line for line in md.splitlines()
                   if line.startswith("|") and "Ours, trained" in line and name in line)
        assert pct(r["rank1"]) in row and pct(r["mAP"]) in row
        row = next(line for line in md.splitlines() if "Ours, untrained" in line and name in line)
        assert pct(inputs["untrained"][name]["rank1"]) in row
    per_cam = inputs["results"]["mars_official"]["per_camera"]
    for cam, m in per_cam.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| C{cam + 1} |"))
        assert pct(m["rank1"]) in row if np.isfinite(m["rank1"]) else "–" in row
    # the HTML results table and the Markdown one hold the same cells
    html_rows = report["parsed"].tables["results-table"]
    md_rows = [[c.strip().strip("*") for c in line.strip("|").split("|")]
               for line in md.splitlines() if line.startswith("| ") and ("Ours," in line or "PSTA paper" in line)]
    assert md_rows == html_rows[1:]


# --------------------------------------------------------------------------- missing inputs

def test_missing_optional_inputs_render_notes(inputs, tmp_path):
    ev = tmp_path / "eval"
    ev.mkdir()
    results = json.loads((inputs["eval"] / "results.json").read_text())
    results["untrained"] = {}
    results.pop("model"), results.pop("provenance")
    for rec in results["protocols"].values():
        for key in ("per_camera", "verification", "ap_histogram"):
            rec.pop(key)
    (ev / "results.json").write_text(json.dumps(results))
    out = build_report(ev, tmp_path / "no_index", None, None, None, tmp_path / "r" / "report.html",
                       tmp_path / "r" / "report.md")
    html_text = Path(out["html"]).read_text(encoding="utf-8")
    md = Path(out["md"]).read_text(encoding="utf-8")
    for what in ("Untrained-model numbers not available", "Per-camera numbers not available",
                 "Training history not available", "Dataset statistics not available",
                 "Ranked lists not available", "Verification metrics not available",
                 "Per-query AP histogram not available", "Embedding projection not available"):
        assert what in html_text and what in md
    assert out["figures"] == ["cmc.png"] and 'id="cmc-plot"' in html_text
    assert {"history", "stats", "untrained", "features"} <= set(out["missing"])
    # a frame cache that is not there: the ranked lists say so, the rest renders
    shutil.copy(inputs["eval"] / "ranked.parquet", ev / "ranked.parquet")
    out = build_report(ev, inputs["index"], tmp_path / "no_cache", tmp_path / "none.csv", None,
                       tmp_path / "r" / "report.html", tmp_path / "r" / "report.md")
    html_text = Path(out["html"]).read_text(encoding="utf-8")
    assert "Ranked-list pictures not available" in html_text and "no_cache" in html_text
    assert "none.csv not found" in html_text
    assert sorted(p.name for p in (tmp_path / "r" / "figures").iterdir()) == ["cmc.png"]
    assert "Model and recipe" not in html_text and "Provenance" not in html_text


def test_missing_results_json_is_one_clear_error(tmp_path):
    (tmp_path / "eval").mkdir()
    with pytest.raises(ReportInputError) as err:
        build_report(tmp_path / "eval", None, None, None, None, tmp_path / "report.html",
                     tmp_path / "report.md")
    msg = str(err.value)
    assert "results.json" in msg and str(tmp_path / "eval") in msg
    assert "python -m pipeline evaluate" in msg
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "report.md").exists()


def test_other_paper_table_and_duke_protocol(inputs, tmp_path):
    """A Duke result set picks the duke row of the paper table; a custom paper table is used."""
    ev = tmp_path / "eval"
    shutil.copytree(inputs["eval"], ev)
    results = json.loads((ev / "results.json").read_text())
    results["dataset"] = "duke"
    results["protocols"] = {"duke": results["protocols"]["mars_official"]}
    results["untrained"] = {"duke": results["untrained"]["mars_official"]}
    (ev / "results.json").write_text(json.dumps(results))
    out = build_report(ev, None, None, None, None, tmp_path / "report.html", tmp_path / "report.md",
                       paper={**paper_table(), "duke": {**paper_table()["duke"], "rank1": 12.3}})
    parsed = parse_html(Path(out["html"]).read_text(encoding="utf-8"))
    rows = parsed.tables["results-table"][1:]
    assert rows[0][:3] == ["PSTA paper (ImageNet ResNet-50)", "DukeMTMC-VideoReID", "duke"]
    assert rows[0][3] == "12.3" and out["protocol_shown"] == "duke"


def test_report_package_imports_no_orchestration_tools():
    code = ("import sys, psta.report, psta.report.render, psta.report.figures; "
            "bad = [m for m in ('prefect', 'mlflow', 'dvc', 'matplotlib.pyplot') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------- a real browser

NEW_FIGURES = ("roc-plot", "distance-plot", "ap-plot", "embedding-plot")


def check_narrow_window(driver, tmp_path) -> dict:
    """At 800 px wide: no sideways scrolling (page, tables), every new figure drawn and fully
    visible. Returns the camera labels of the per-camera table and the ranked lists' captions."""
    driver.set_window_size(800, 1000)
    width = driver.execute_script("return window.innerWidth;")
    assert width <= 800
    scroll, client = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];")
    assert scroll <= client, (scroll, client)
    wraps = driver.execute_script("return Array.from(document.querySelectorAll('.tablewrap'))"
                                  ".map(e => [e.scrollWidth, e.clientWidth]);")
    assert wraps and all(s <= c for s, c in wraps), wraps
    for figure in NEW_FIGURES:
        done, natural, right = driver.execute_script(
            "const i = document.getElementById(arguments[0]);"
            "return [i.complete, i.naturalWidth, i.getBoundingClientRect().right];", figure)
        assert done and natural > 200 and right <= client, (figure, done, natural, right)
    driver.save_screenshot(str(tmp_path / "report_800.png"))
    cameras = driver.execute_script("return Array.from(document.querySelectorAll('#camera-table tbody tr'))"
                                    ".map(r => r.cells[0].textContent.trim());")
    captions = driver.execute_script("return Array.from(document.querySelectorAll('figure.ranked figcaption'))"
                                     ".map(c => c.textContent);")
    return {"cameras": cameras,
            "captions": [re.search(r"query tracklet (\d+),.*?camera (C\d+)", c).groups() for c in captions]}


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
                    reason="headless browser test needs /usr/bin/chromium and /usr/bin/chromedriver "
                           "(Debian packages chromium and chromium-driver; `make test` installs them)")
def test_report_renders_in_headless_chromium(report, inputs, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    os.environ["SE_OFFLINE"] = "true"   # never let Selenium Manager fetch a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chrome-profile'}",
                 "--window-size=1280,1000", "--force-device-scale-factor=1"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(report["html"]).resolve().as_uri())
        assert "run report" in driver.title
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth]);")
        assert len(images) == report["num_figures"]
        assert all(done and width > 0 for _, done, width in images), images
        cmc = driver.find_element(By.ID, "cmc-plot")
        assert cmc.get_attribute("alt") == "CMC curve"
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", cmc)
        assert cmc.is_displayed()
        rect = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height, window.devicePixelRatio,"
            "        window.innerWidth, window.innerHeight];", cmc)
        left, top, width, height, dpr, vw, vh = rect
        assert width > 300 and height > 150
        assert 0 <= top and top + height <= vh + 1, rect   # fully in the viewport
        shot_path = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot_path))
        # the whole page too, for a human to look at (kept in the test's tmp dir)
        total_h = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(1280, min(int(total_h) + 120, 12000))
        driver.save_screenshot(str(tmp_path / "report_full.png"))
        narrow = check_narrow_window(driver, tmp_path)
    finally:
        driver.quit()
    assert narrow["cameras"] == [f"C{c + 1}" for c in sorted(inputs["results"]["mars_official"]["per_camera"])]
    camid = inputs["test"].set_index("tracklet_id")["camid"]
    for query, camera in narrow["captions"]:   # "query tracklet 16, ..., camera C2, ..."
        assert camera == f"C{camid[int(query)] + 1}"

    shot = np.asarray(Image.open(shot_path).convert("RGB")).astype(int)
    x0, y0 = int(round(left * dpr)), int(round(top * dpr))
    crop = shot[y0:y0 + int(height * dpr), x0:x0 + int(width * dpr)]
    assert crop.shape[0] > 100 and crop.shape[1] > 200
    px = crop.reshape(-1, 3)
    non_white = (px.min(1) < 235).mean()
    assert 0.02 < non_white < 0.8, non_white      # a plot, neither blank nor a solid block
    # matplotlib's first two line colours (C0 blue, C1 orange): the two protocols' curves
    for colour in ((31, 119, 180), (255, 127, 14)):
        close = (np.abs(px - np.array(colour)).sum(1) < 60).sum()
        assert close > 200, (colour, close)


def test_synthetic_source_is_labelled_and_not_compared_with_the_paper(report, inputs, tmp_path):
    """The demo data gets no deltas to the paper (whose numbers are on real MARS)."""
    assert "Δ" in report["html_text"]  # a real dataset: cards show the difference to the paper
    out = build_report(inputs["eval"], inputs["index"], None, None, None, tmp_path / "report.html",
                       tmp_path / "report.md", data_source="synthetic")
    text = Path(out["html"]).read_text(encoding="utf-8")
    parsed = parse_html(text)
    assert "Δ" not in text and "synthetic, MARS layout run report" in text
    # our results and the paper's in separate tables
    rows = parsed.tables["results-table"][1:]
    assert all(r[0].startswith("Ours") for r in rows) and {r[1] for r in rows} == {"synthetic, MARS layout"}
    paper = parsed.tables["paper-table"]
    assert ["MARS", "mars_official", "91.5", "85.8"] in paper
    assert "paper&#39;s results (real datasets)" in text
    assert "shown for reference, not for comparison" in text


def test_html_escapes_text_and_markdown_keeps_it(inputs, tmp_path):
    """Autoescaping: text that looks like markup is shown as text in the HTML, as is in Markdown."""
    note = 'picked by <script>alert("x")</script> & the "last" epoch'
    out = build_report(inputs["eval"], None, None, None, None, tmp_path / "report.html",
                       tmp_path / "report.md", selection=note)
    html_text = Path(out["html"]).read_text(encoding="utf-8")
    assert "<script>" not in html_text
    assert "picked by &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; the &#34;last&#34; epoch" in html_text
    assert not [a for t, a in parse_html(html_text).tags if t == "script"]
    assert note in Path(out["md"]).read_text(encoding="utf-8")


def test_summary_states_model_recipe_provenance_and_intervals(report, inputs):
    text = report["html_text"]
    facts = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", text))
    assert facts["Architecture"] == "PSTA, resnet18 backbone"
    assert facts["Input"] == "64 × 32 px, T = 4 frames per clip"
    assert facts["Pretrained weights"] == "none" and facts["Epochs"] == "12"
    assert facts["Precision"] == "auto (bf16)"
    assert facts["Git commit"] == PROVENANCE["git_commit"][:12]
    assert facts["Params hash"] == "feedbeef" and facts["MLflow run (evaluate)"] == "a1b2c3d4e5"
    assert facts["Evaluated"] == PROVENANCE["date"]
    # what was trained on: the held-out validation identity apart
    assert facts["Training identities"] == "3 (1 more held out for validation)"
    # the headline numbers carry their 95% bootstrap interval, in the cards and in the table
    res = inputs["results"]["mars_official"]
    for key in ("rank1", "mAP"):
        low, high = (pct(v) for v in res[f"{key}_ci"])
        assert float(low) <= float(pct(res[key])) <= float(high)
        assert f"95% CI {low}–{high}" in text
    table = report["parsed"].tables["results-table"]
    row = next(r for r in table[1:] if r[0] == "Ours, trained" and r[2] == "mars_official")
    assert row[table[0].index("Rank-1 95% CI")] == "–".join(pct(v) for v in res["rank1_ci"])
    assert row[table[0].index("mAP 95% CI")] == "–".join(pct(v) for v in res["mAP_ci"])
    v = res["verification"]
    assert f"{v['threshold']:.4f}" in text and "Same-person threshold" in text


def test_metrics_json_holds_the_threshold_and_intervals(inputs):
    metrics = json.loads((inputs["reports"] / "metrics.json").read_text())
    for name in PROTOCOLS:
        res, m = inputs["results"][name], metrics[name]
        v = m["verification"]
        assert v["threshold"] == res["verification"]["threshold"] and v["distance"] == "cosine"
        assert v["target_fpr"] == 1e-3
        assert v["tpr_at_target_fpr"] == round(100 * res["verification"]["threshold_tpr"], 2)
        assert set(v) >= {"tpr_at_fpr_0.0001", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01", "eer", "auc"}
        assert m["rank1_ci95_low"] <= m["rank1"] <= m["rank1_ci95_high"]
        assert m["mAP_ci95_low"] <= m["mAP"] <= m["mAP_ci95_high"]
        # the threshold's rule on the fitting pairs: distance <= threshold is "same person"
        split = protocol_split(name, inputs["test"])
        pid, cam = inputs["test"]["pid"].to_numpy(), inputs["test"]["camid"].to_numpy()
        D = pairwise_distance(inputs["feats"][split.query_rows], inputs["feats"][split.gallery_rows])
        qp, gp = pid[split.query_rows][:, None], pid[split.gallery_rows][None, :]
        same, junk = qp == gp, (qp == gp) & (cam[split.query_rows][:, None] == cam[split.gallery_rows][None, :])
        accepted = D <= v["threshold"]
        assert (accepted & ~same).sum() / (~same).sum() <= v["target_fpr"]
        assert round(100 * (accepted & same & ~junk).sum() / (same & ~junk).sum(), 2) == v["tpr_at_target_fpr"]
    assert set(metrics["untrained"]["mars_official"]) == {"rank1", "mAP", "rank1_ci95_low",
                                                          "rank1_ci95_high", "mAP_ci95_low", "mAP_ci95_high"}


def test_evaluate_stage_records_what_was_trained_on():
    """The report's "training identities" counts the identities trained on: the held-out
    validation ones (the trainer's own split) apart."""
    from pipeline.stages.evaluate import model_record
    from psta.engine import split_validation

    config = {"arch": "psta", "num_classes": 20, "seq_len": 4, "height": 64, "width": 32,
              "backbone": "resnet18", "pretrained": "none"}
    record = model_record({"config": config, "epochs": 14, "train_config": {
        "val_fraction": 0.1, "seed": 3, "precision": "fp32", "device": "cpu"}})
    _, held = split_validation(np.arange(20), 0.1, (), 3)
    assert (record["train_identities"], record["val_identities"]) == (20 - len(held), len(held)) == (18, 2)
    assert record["precision"] == "fp32" and record["epochs"] == 14 and record["backbone"] == "resnet18"
    auto = model_record({"config": config, "train_config": {"precision": "auto", "device": "cpu"}})
    assert auto["precision"] in ("auto (fp32)", "auto (bf16)") and auto["val_identities"] == 0
