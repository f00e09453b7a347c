"""The run report: a self-contained HTML page and a Markdown twin (docs/CONTRACTS.md inputs).

    from psta.report import build_report
    build_report("data/eval", "data/index", "data/cache", "reports/train_history.csv",
                 "reports/metrics.json", "reports/report.html", "reports/report.md")

Sections: run summary, results beside the paper's table (trained and untrained), CMC curve,
per-camera table, training curves, dataset statistics and ranked-list pictures of the best and
worst queries. The sections are plain data rendered by Jinja2 templates (``templates/``);
figures are PNGs made with matplotlib (Agg canvas) and numpy/Pillow.
"""
from .inputs import ReportInputError, load_results
from .paper import paper_table
from .render import build_report
from .strips import MATCH_COLOR, MISS_COLOR, QUERY_COLOR, ranked_strip, strip_layout

__all__ = [
    "MATCH_COLOR", "MISS_COLOR", "QUERY_COLOR", "ReportInputError", "build_report", "load_results",
    "paper_table", "ranked_strip", "strip_layout",
]
