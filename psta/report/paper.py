"""The paper's published numbers and the protocol they use: the report's one place for them.

Every lookup of the paper table goes through :func:`paper_result` and
:func:`headline_protocol`, so the table can move to a dataset registry without touching the
report's sections or templates.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PAPER_RESULTS", "HEADLINE_PROTOCOL", "paper_result", "headline_protocol",
           "dataset_display_name"]

#: The paper's headline table (PSTA, ICCV 2021; ImageNet-initialised ResNet-50), in percent.
PAPER_RESULTS: dict[str, dict[str, Any]] = {
    "mars": {"dataset": "MARS", "rank1": 91.5, "mAP": 85.8, "protocol": "mars_official"},
    "duke": {"dataset": "DukeMTMC-VideoReID", "rank1": 98.3, "mAP": 97.7, "protocol": "duke"},
}
#: the protocol the paper's numbers use, per dataset
HEADLINE_PROTOCOL = {"mars": "mars_official", "duke": "duke"}


def paper_table(table: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The paper table to show: ``table`` when given, else :data:`PAPER_RESULTS`."""
    return dict(PAPER_RESULTS if table is None else table)


def paper_result(dataset: str, table: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The paper's row for ``dataset`` (``{"dataset", "rank1", "mAP", "protocol"}``), or None."""
    return paper_table(table).get(dataset)


def headline_protocol(dataset: str, protocols, table: dict[str, dict[str, Any]] | None = None) -> str:
    """The protocol whose numbers lead the report: the paper's for ``dataset`` when it was
    evaluated, else the first of ``protocols``."""
    wanted = (paper_result(dataset, table) or {}).get("protocol") or HEADLINE_PROTOCOL.get(dataset)
    return wanted if wanted in protocols else next(iter(protocols))


def dataset_display_name(dataset: str, table: dict[str, dict[str, Any]] | None = None) -> str:
    """The dataset's published name ("MARS"), or its key when the paper table lacks it."""
    return (paper_result(dataset, table) or {}).get("dataset", dataset)
