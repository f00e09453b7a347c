"""splits-summary's choice of experiments and its statistics, on `dvc exp show --json` records
(the end-to-end run with real DVC experiments is in test_dataset_stages.py)."""
from __future__ import annotations

import statistics

import pytest

from pipeline.splits import collect, summarise, table


def entry(rev: str, split: int, rank1: float | None, epochs: int = 1, when: str = "2026-01-01T00:00:00",
          state: str = "success") -> dict:
    metrics = {"reports/metrics.json": {"data": {
        "ilidsvid": {"rank1": rank1, "rank5": 90.0, "rank10": 95.0, "rank20": 99.0, "mAP": rank1 - 5, "mINP": 1.0},
        "untrained": {"ilidsvid": {"rank1": 1.0, "mAP": 2.0}}}}} if rank1 is not None else {}
    data = {"rev": rev, "timestamp": when, "metrics": metrics,
            "params": {"params.yaml": {"data": {"data": {"source": "ilidsvid", "split": split},
                                                "train": {"epochs": epochs}}}}}
    return {"revs": [{"rev": rev, "name": f"exp-{rev}", "data": data}], "executor": {"state": state},
            "name": f"exp-{rev}"}


def shown(*experiments: dict, workspace_split: int = 0) -> list[dict]:
    ws = entry("workspace", workspace_split, None)["revs"][0]
    return [ws, {"rev": "abc", "name": "main", "data": {}, "experiments": list(experiments)}]


def test_only_finished_experiments_of_this_configuration_newest_per_split():
    exps = collect(shown(
        entry("a", 0, 60.0, when="2026-01-01T10:00:00"),
        entry("b", 0, 70.0, when="2026-01-01T11:00:00"),      # a newer run of split 0 wins
        entry("c", 1, 80.0),
        entry("d", 2, 99.0, epochs=5),                         # another configuration: left out
        entry("e", 3, 99.0, state="failed"),                   # failed: left out
        entry("f", 4, None),                                   # no metrics: left out
        workspace_split=7))
    assert [e["rev"] for e in exps] == ["b", "a", "c"]
    result = summarise(exps, ("ilidsvid",), 10)
    assert result["splits"] == [0, 1] and result["missing_splits"] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert [e["rev"] for e in result["experiments"]] == ["b", "c"]
    rank1 = result["summary"]["ilidsvid"]["rank1"]
    assert rank1 == {"mean": 75.0, "std": round(statistics.stdev([70.0, 80.0]), 2), "n": 2}
    assert result["summary"]["ilidsvid"]["mAP"]["mean"] == 70.0
    assert "untrained" not in result["experiments"][0]["metrics"]
    assert table(result).splitlines()[2] == ("| ilidsvid | 2 | 75.0 ± 7.1 | 90.0 ± 0.0 | 95.0 ± 0.0 | 99.0 ± 0.0 "
                                             "| 70.0 ± 7.1 |")


@pytest.mark.parametrize("n", [1])
def test_one_split_has_a_mean_and_no_std(n):
    result = summarise(collect(shown(entry("a", 3, 64.0))), ("ilidsvid",), 10)
    assert result["summary"]["ilidsvid"]["rank1"] == {"mean": 64.0, "std": None, "n": n}
    assert "| 64.0 |" in table(result)


def test_a_metric_not_computed_nan_is_left_out():
    a, b = entry("a", 0, 60.0), entry("b", 1, 70.0)
    for e in (a, b):
        e["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["ilidsvid"]["rank20"] = float("nan")
    a["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["ilidsvid"]["rank10"] = float("nan")
    result = summarise(collect(shown(a, b)), ("ilidsvid",), 10)
    assert result["summary"]["ilidsvid"]["rank20"] == {"mean": None, "std": None, "n": 0}
    assert result["summary"]["ilidsvid"]["rank10"] == {"mean": 95.0, "std": None, "n": 1}
    assert "| – |" in table(result)
