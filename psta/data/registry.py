"""The dataset registry: one :class:`DatasetSpec` per dataset, everything the pipeline needs.

Like torchreid's ``register_video_dataset`` and fast-reid's ``DATASET_REGISTRY``, this is the
one place that knows which datasets exist. The ingest stage reads (or generates) a dataset
through its spec, the evaluate stage takes its protocols and test sampling from it, the report
its paper results and headline protocol, and params validation its name (``data.source``,
``synthetic.layout``).

Adding a dataset: write a module ``psta/data/<name>.py`` with its reader (``root`` ->
:class:`~psta.data.raw.RawTracklets`, plus the keyword options it takes from params.yaml's
``data`` section, e.g. ``split``) and, for tests and the demo, a synthetic writer
(``(root, SyntheticConfig) -> planted counts``, see :mod:`psta.data.synthetic`), then add one
``DatasetSpec`` entry to :data:`DATASETS` below. Code outside the library can call
:func:`register_dataset` instead.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from psta.data.duke import read_duke
from psta.data.ilidsvid import generate_ilidsvid, read_ilidsvid
from psta.data.lsvid import generate_lsvid, read_lsvid
from psta.data.mars import read_mars
from psta.data.prid import generate_prid, read_prid
from psta.data.raw import RawTracklets
from psta.data.synthetic import DUKE_CAMERAS, MARS_CAMERAS, generate_duke, generate_mars
from psta.errors import DatasetError

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "DatasetSpec",
    "PaperResult",
    "Protocol",
    "dataset_names",
    "get_dataset",
    "get_protocol",
    "register_dataset",
    "synthetic_layouts",
]


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: which rows of the tracklet table form the gallery.

    The queries are the ``query`` rows; the gallery is the ``gallery`` rows, plus the
    queries when ``queries_in_gallery``. Under every protocol, for each query the gallery
    items with its identity and camera are ignored (this removes the query itself).
    """

    name: str
    queries_in_gallery: bool
    description: str


@dataclass(frozen=True)
class PaperResult:
    """The PSTA paper's number on a dataset (percent; ``None`` where the paper gives none) and
    the protocol it was measured under."""

    rank1: float
    mAP: float | None
    protocol: str


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline knows about one dataset.

    Attributes:
        name: the key in params.yaml (``data.source``, ``synthetic.layout``), index and MLflow.
        title: the dataset's published name (report, messages).
        reader: ``root -> RawTracklets``; reads the dataset in place, never writes to it.
        synthetic: ``(root, SyntheticConfig, *, workers=None) -> planted counts``: writes a
            synthetic dataset in the same layout, atomically; ``None`` if there is none.
        protocols: the evaluation protocols reported, the headline one among them.
        headline_protocol: the protocol of the paper's number and of the report's headline.
        test_sampling: the paper's test clips (``evaluate.sampling: auto``).
        paper: PSTA's published result, or ``None``.
        split_scheme: how the release splits train and test (recorded with the ingested data).
        cameras: the release's cameras, the synthetic layout's default ``num_cameras`` (params
            validation checks ``synthetic.cameras_per_id`` against it; ``None``: the writer does).
        num_splits: how many published train/test splits there are (``data.split`` picks one;
            1 for a fixed split).
        reader_options: the ``data`` keys the reader takes as keyword arguments
            (``split``, ``split_file``, ``split_seed``).
    """

    name: str
    title: str
    reader: Callable[[str | os.PathLike], RawTracklets]
    synthetic: Callable[..., dict] | None
    protocols: tuple[Protocol, ...]
    headline_protocol: str
    test_sampling: Literal["begin", "dense", "all"]
    paper: PaperResult | None
    split_scheme: str
    cameras: int | None = None
    num_splits: int = 1
    reader_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [p.name for p in self.protocols]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"dataset {self.name!r}: protocols must be non-empty and distinct, got {names}")
        if self.headline_protocol not in names:
            raise ValueError(f"dataset {self.name!r}: headline protocol {self.headline_protocol!r} "
                             f"is not one of its protocols {names}")
        if self.paper is not None and self.paper.protocol not in names:
            raise ValueError(f"dataset {self.name!r}: the paper's protocol {self.paper.protocol!r} "
                             f"is not one of its protocols {names}")

    @property
    def protocol_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.protocols)

    def check_split(self, split: int) -> None:
        """A ``data.split`` other than 0 for a dataset with one fixed split is an error (it
        would silently change nothing)."""
        if self.num_splits == 1 and split:
            raise DatasetError(f"data.split={split}, but {self.title} has one fixed train/test "
                               f"split; set data.split: 0 (the 10-split protocols are iLIDS-VID's "
                               f"and PRID-2011's)")

    def read(self, root: str | os.PathLike, **options) -> RawTracklets:
        """Read the dataset at ``root``; ``options`` (params.yaml's ``data`` keys) are passed on
        to the reader where it takes them (see :meth:`check_split`)."""
        self.check_split(options.get("split", 0))
        return self.reader(root, **{k: v for k, v in options.items() if k in self.reader_options})


#: dataset name -> spec, in registration order
DATASETS: dict[str, DatasetSpec] = {}
#: protocol name -> protocol, over every registered dataset
PROTOCOLS: dict[str, Protocol] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` (and its protocols) to the registry; a name may be registered once."""
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    for p in spec.protocols:
        if PROTOCOLS.get(p.name, p) != p:
            raise ValueError(f"dataset {spec.name!r}: protocol {p.name!r} is already registered "
                             f"with another definition")
    DATASETS[spec.name] = spec
    for p in spec.protocols:
        PROTOCOLS[p.name] = p
    return spec


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names (``data.source`` values that read a dataset in place)."""
    return tuple(DATASETS)


def synthetic_layouts() -> tuple[str, ...]:
    """The datasets with a synthetic writer (``synthetic.layout`` values)."""
    return tuple(name for name, spec in DATASETS.items() if spec.synthetic is not None)


def get_dataset(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; an unknown name is a :class:`DatasetError` listing the known."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; data.source must be one of "
                           f"{list(dataset_names())} (or synthetic / videos)") from None


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}") from None


# ------------------------------------------------------------------------------ the datasets

MARS_OFFICIAL = Protocol("mars_official", queries_in_gallery=True,
                         description="gallery = queries + gallery rows (MARS authors' code, PSTA)")
MARS_TORCHREID = Protocol("mars_torchreid", queries_in_gallery=False,
                          description="gallery = gallery rows only (torchreid's MARS)")
DUKE = Protocol("duke", queries_in_gallery=False,
                description="gallery = gallery rows as they are (they already hold the queries)")

register_dataset(DatasetSpec(
    name="mars", title="MARS", reader=read_mars, synthetic=generate_mars,
    protocols=(MARS_OFFICIAL, MARS_TORCHREID), headline_protocol="mars_official",
    test_sampling="begin", paper=PaperResult(rank1=91.5, mAP=85.8, protocol="mars_official"),
    split_scheme="fixed: the release's train / test (query_IDX marks the queries)", cameras=MARS_CAMERAS,
))
register_dataset(DatasetSpec(
    name="duke", title="DukeMTMC-VideoReID", reader=read_duke, synthetic=generate_duke,
    protocols=(DUKE,), headline_protocol="duke",
    test_sampling="dense", paper=PaperResult(rank1=98.3, mAP=97.7, protocol="duke"),
    split_scheme="fixed: the release's train / query / gallery folders", cameras=DUKE_CAMERAS,
))

ILIDSVID = Protocol("ilidsvid", queries_in_gallery=False,
                    description="query = cam1, gallery = cam2 sequences of the split's test "
                                "identities (one true match per query)")
PRID = Protocol("prid", queries_in_gallery=False,
                description="query = cam_a, gallery = cam_b sequences of the split's test "
                            "identities (one true match per query)")
LSVID = Protocol("lsvid", queries_in_gallery=True,
                 description="gallery = queries + gallery rows (LS-VID authors' code)")
LSVID_GALLERY_ONLY = Protocol("lsvid_gallery_only", queries_in_gallery=False,
                              description="gallery = gallery rows only (the queries left out)")

register_dataset(DatasetSpec(
    name="ilidsvid", title="iLIDS-VID", reader=read_ilidsvid, synthetic=generate_ilidsvid,
    protocols=(ILIDSVID,), headline_protocol="ilidsvid", test_sampling="dense",
    paper=PaperResult(rank1=91.5, mAP=None, protocol="ilidsvid"),
    split_scheme="10 random halves of the 300 people (train_test_splits_ilidsvid.mat); data.split picks one",
    num_splits=10, reader_options=("split",),
))
register_dataset(DatasetSpec(
    name="prid", title="PRID-2011", reader=read_prid, synthetic=generate_prid,
    protocols=(PRID,), headline_protocol="prid", test_sampling="dense", paper=None,
    split_scheme="10 random halves of the 178 people with >= 27 frames in both cameras; data.split picks one",
    num_splits=10, reader_options=("split", "split_file", "split_seed"),
))
register_dataset(DatasetSpec(
    name="lsvid", title="LS-VID", reader=read_lsvid, synthetic=generate_lsvid,
    protocols=(LSVID, LSVID_GALLERY_ONLY), headline_protocol="lsvid", test_sampling="begin", paper=None,
    split_scheme="fixed: the release's train / val / test lists (info_test.mat marks the queries)",
))
