"""The paper's published numbers and the protocol they use, as the report shows them.

They live in the dataset registry (:mod:`psta.data.registry`: each ``DatasetSpec``'s ``paper``,
``headline_protocol`` and ``title``); every lookup of the report goes through
:func:`paper_result` and :func:`headline_protocol`. A caller may pass its own ``table``
(``{dataset key: {"dataset", "rank1", "mAP", "protocol"}}``, percent) instead.
"""
from __future__ import annotations

from typing import Any

from psta.data.registry import DATASETS

__all__ = ["paper_table", "paper_result", "headline_protocol", "dataset_display_name"]


def paper_table(table: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The paper table to show: ``table`` when given, else every registered dataset's paper
    result (PSTA, ICCV 2021; ImageNet-initialised ResNet-50)."""
    if table is not None:
        return dict(table)
    return {name: {"dataset": spec.title, "rank1": spec.paper.rank1, "mAP": spec.paper.mAP,
                   "protocol": spec.paper.protocol}
            for name, spec in DATASETS.items() if spec.paper is not None}


def paper_result(dataset: str, table: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The paper's row for ``dataset`` (``{"dataset", "rank1", "mAP", "protocol"}``), or None."""
    return paper_table(table).get(dataset)


def headline_protocol(dataset: str, protocols, table: dict[str, dict[str, Any]] | None = None) -> str:
    """The protocol whose numbers lead the report: the paper's (else the registry's headline)
    for ``dataset`` when it was evaluated, else the first of ``protocols``."""
    spec = DATASETS.get(dataset)
    wanted = (paper_result(dataset, table) or {}).get("protocol") or (spec.headline_protocol if spec else None)
    return wanted if wanted in protocols else next(iter(protocols))


def dataset_display_name(dataset: str, table: dict[str, dict[str, Any]] | None = None) -> str:
    """The dataset's published name ("MARS"), or its key when neither the paper table nor the
    registry knows it."""
    spec = DATASETS.get(dataset)
    return (paper_result(dataset, table) or {}).get("dataset") or (spec.title if spec else dataset)
