"""A report as a list of blocks, rendered to Markdown and to a self-contained-enough HTML page.

Blocks: ``("h", level, text)``, ``("p", text)``, ``("list", [text, ...])``, ``("code", text)``,
``("table", DataFrame)``, ``("img", relative_path, caption)``. Text may use ``**bold**`` and
`` `code` ``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

Block = tuple[Any, ...]
CSS = (  # one line in the page
    'body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: '
    "1100px; margin: 2em auto; padding: 0 1em; color: #222; } h1, h2, h3 { line-height: 1.2; } h2 "
    "{ border-bottom: 1px solid #ddd; padding-bottom: .2em; } table { border-collapse: collapse; "
    "margin: 1em 0; font-size: 13px; } th, td { border: 1px solid #ccc; padding: 3px 7px; "
    "text-align: left; vertical-align: top; }th { background: #f3f3f3; } tr:nth-child(even) td { "
    "background: #fafafa; } code, pre { font-family: Menlo, Consolas, monospace; font-size: 13px; "
    "background: #f5f5f5; } pre { padding: .6em; overflow-x: auto; } figure { margin: 1.5em 0; } "
    "figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 13px; color: "
    "#555; } .reproduced { color: #137333; font-weight: 600; }.not-reproduced { color: #b3261e; "
    "font-weight: 600; } .inconclusive { color: #8a6d00; } "
)


def cell(value: Any) -> str:
    """A table cell as text: floats to 4 significant digits, missing values as an em dash."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _md_table(df: pd.DataFrame) -> str:
    def esc(v: Any) -> str:
        return cell(v).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(esc(c) for c in df.columns) + " |",
        "|" + "|".join("---" for _ in df.columns) + "|",
    ]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append("#" * rest[0] + " " + rest[1])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "code":
            out.append(f"```\n{rest[0]}\n```")
        elif kind == "table":
            out.append(_md_table(rest[0]) if len(rest[0]) else "_(empty)_")
        elif kind == "img":
            out.append(f"![{Path(rest[0]).stem}]({rest[0]})\n\n*{rest[1]}*")
    return "\n\n".join(out) + "\n"


def inline(text: str) -> str:
    """Escape ``text`` for HTML, then turn **bold** and `code` into tags."""
    text = html.escape(str(text))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _verdict_class(text: str) -> str:
    for key in ("not reproduced", "reproduced", "inconclusive"):
        if text.startswith(key):
            return key.replace(" ", "-")
    return ""


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{inline(c)}</th>" for c in df.columns)
    rows = []
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            cls = _verdict_class(str(v)) if isinstance(v, str) else ""
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{inline(cell(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for kind, *rest in blocks:
        if kind == "h":
            body.append(f"<h{rest[0]}>{inline(rest[1])}</h{rest[0]}>")
        elif kind == "p":
            body.append(f"<p>{inline(rest[0])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "code":
            body.append(f"<pre><code>{html.escape(rest[0])}</code></pre>")
        elif kind == "table":
            body.append(_html_table(rest[0]) if len(rest[0]) else "<p><em>(empty)</em></p>")
        elif kind == "img":
            body.append(
                f'<figure><img src="{html.escape(rest[0])}" '
                f'alt="{html.escape(Path(rest[0]).stem)}">'
                f"<figcaption>{inline(rest[1])}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title>\n<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
