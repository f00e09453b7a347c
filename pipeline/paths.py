"""Where each stage writes: the same literal paths dvc.yaml declares as outs."""
from pathlib import Path

RAW = Path("data/raw")
INGEST = Path("data/ingest")
MANIFEST = INGEST / "manifest.parquet"
INGEST_STATS = INGEST / "stats.json"
DATASET_INFO = INGEST / "dataset.json"
INDEX = Path("data/index")
CACHE = Path("data/cache")
MODELS = Path("data/models")
EVAL = Path("data/eval")
REPORTS = Path("reports")
GALLERY = Path("data/gallery")
EXPORT = Path("data/export")
