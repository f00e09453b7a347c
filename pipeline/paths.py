"""Where each stage writes: the same literal paths dvc.yaml declares as outs."""
from pathlib import Path

# generated dataset trees (synthetic demo, tracklets cut from videos); never a user's data
GENERATED = Path("data/generated")
INGEST = Path("data/ingest")
MANIFEST = INGEST / "manifest.parquet"
INGEST_STATS = INGEST / "stats.json"
DATASET_INFO = INGEST / "dataset.json"
INDEX = Path("data/index")
CACHE = Path("data/cache")
TRAIN_STATE = Path("data/train")
MODELS = Path("data/models")
EVAL = Path("data/eval")
REPORTS = Path("reports")
GALLERY = Path("data/gallery")
EXPORT = Path("data/export")
# where a user's own datasets go by default: outside every output, ignored by git and DVC
DATASETS = Path("datasets")

# what each stage replaces, whatever dvc.yaml says (pipeline.dvcfile.all_outs adds dvc.yaml's)
STAGE_OUTPUTS = {
    GENERATED: "ingest", INGEST: "ingest", INDEX: "index", CACHE: "cache",
    TRAIN_STATE: "train", MODELS: "train", EVAL: "evaluate",
    REPORTS / "metrics.json": "evaluate", REPORTS / "cmc.csv": "evaluate",
    REPORTS / "train_history.csv": "train", REPORTS / "report.html": "report",
    REPORTS / "report.md": "report", REPORTS / "figures": "report",
    GALLERY: "gallery", EXPORT: "export",
}
