"""Write the report page: the static page (``report.html``, ``report.js``, ``report.css``, package data)
with the report's data inlined, as one self-contained HTML file.

Nothing is fetched when the page opens: the script, the style sheet, the data
(a ``<script type="application/json">`` block) and every image (data URIs
inside the data) are in the one file, so it works offline, from a file
manager or an e-mail attachment. The JSON is written compactly, with keys in
the order the data was built and every ``<`` escaped (so no text of a sample
can close the script block); the same data gives the same bytes.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ..io.runs import atomic_write_bytes

STATIC = ("report.html", "report.css", "report.js")
MARKERS = {"css": "/*__REPORT_CSS__*/", "js": "/*__REPORT_JS__*/", "data": "__REPORT_DATA__",
           "title": "__REPORT_TITLE__"}


def static_text(name: str) -> str:
    """One of the page's static files, read from the installed package."""
    return resources.files("horizon.report").joinpath(name).read_text(encoding="utf-8")


def data_json(data: dict[str, Any]) -> str:
    """The data as compact JSON that is safe inside a script block (``<`` escaped as ``\\u003c``)."""
    public = {k: v for k, v in data.items() if not k.startswith("_")}
    text = json.dumps(public, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render(data: dict[str, Any], title: str = "horizon report") -> str:
    """The whole page as text: the template cut at its markers, each filled once (no filling is searched
    again, so a sample's text that happens to read like a marker stays text)."""
    from html import escape

    page = static_text("report.html")
    fill = {MARKERS["title"]: escape(title), MARKERS["css"]: static_text("report.css"),
            MARKERS["js"]: static_text("report.js").replace("</script", "<\\/script"),
            MARKERS["data"]: data_json(data)}
    pieces = re.split("(" + "|".join(re.escape(m) for m in fill) + ")", page)
    found = [p for p in pieces if p in fill]
    once = [MARKERS["css"], MARKERS["js"], MARKERS["data"]]
    if any(found.count(m) != 1 for m in once) or MARKERS["title"] not in found:
        raise RuntimeError(f"report.html must hold each of {', '.join(once)} exactly once, and {MARKERS['title']}")
    return "".join(fill.get(p, p) for p in pieces)


def write_page(data: dict[str, Any], out: str | Path, title: str = "horizon report") -> Path:
    """Write the page to ``out`` atomically (a temporary name, then a rename); returns ``out``."""
    out = Path(out)
    atomic_write_bytes(out, render(data, title).encode("utf-8"))
    return out
