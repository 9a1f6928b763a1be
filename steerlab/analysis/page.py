"""A Markdown report as one self-contained HTML page (tables rendered, plots embedded): the form
`steerlab run` writes its report in and the web interface shows any run's report in.

Reports quote data (answer texts, dataset paths, vector and run names), so the Markdown is
rendered with raw HTML off: a ``<script>`` or ``<img onerror=…>`` in a benchmark's text shows
as text, and links keep only safe schemes (markdown-it's CommonMark renderer)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt


def html_page(markdown_text: str, folder: Path, title: str) -> str:
    """The Markdown as one self-contained HTML page: tables rendered, the PNG plots it shows
    from ``folder`` embedded (an image path leading elsewhere is left as written, unread)."""
    body = _RENDERER.render(markdown_text)

    def embed(match: re.Match) -> str:
        path = (folder / html.unescape(match.group(1))).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            return match.group(0)  # only the folder's own plots are read
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^":]+\.png)"', embed, body)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}"
            f"</title><style>{PAGE_STYLE}</style></head><body>\n{body}\n</body></html>\n")


_RENDERER = MarkdownIt("commonmark", {"html": False}).enable("table")

PAGE_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;"
    "color:#1d1d1f;line-height:1.45}h1{border-bottom:2px solid #ddd}h2{margin-top:2rem;"
    "border-bottom:1px solid #eee}table{border-collapse:collapse;margin:.8rem 0;font-size:.88rem}"
    "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}img{max-width:100%}pre{background:#f6f6f6;padding:.8rem;"
    "overflow-x:auto;font-size:.8rem}"
)
