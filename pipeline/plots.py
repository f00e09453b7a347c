"""`dvc plots show` that renders offline: an HTML page template with Vega inlined.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN, so without internet it is
blank. .dvc/config sets ``plots.html_template`` to :data:`TEMPLATE`, which this module writes
(`make install` and `python -m pipeline repro` do) with the three libraries' UMD builds inlined.
They come from the PyPI package django-js-lib-vega-embed (the unmodified MIT builds of Vega
5, Vega-Lite 5 and vega-embed 6; it needs no Django).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from psta.atomic import atomic_path

TEMPLATE = Path(".dvc/plots/offline.html")
SCRIPTS = ("vega5.js", "vega-lite5.js", "vega-embed6.js")

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>PSTA pipeline plots (DVC)</title>
<!-- Vega, Vega-Lite and vega-embed inlined: this page needs no network -->
<script>{library}</script>
<style>body { font-family: sans-serif; } table { border-spacing: 15px; }</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def html_template() -> str:
    """The page DVC fills: ``{plot_divs}`` (and ``{refresh_tag}``) are DVC's placeholders."""
    folder = files("js_lib_vega_embed") / "static" / "js_lib_vega_embed"
    # a script body must not close its own tag; inside a JS string "<\/" is the same text
    library = "\n".join((folder / name).read_text(encoding="utf-8") for name in SCRIPTS)
    library = library.replace("</script", "<\\/script")
    return PAGE.replace("{library}", library)


def write_html_template(path: str | Path = TEMPLATE) -> Path:
    """Write the template unless it is already up to date."""
    path = Path(path)
    page = html_template()
    if not path.is_file() or path.read_text(encoding="utf-8") != page:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(page, encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_html_template())
