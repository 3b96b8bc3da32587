"""The one report model: a report is a list of blocks (``Heading``, ``Text``, ``Table``, ``Image``) rendered to a
self-contained HTML page (no scripts, CSS inline, PNGs as base64 ``data:`` URLs) and to Markdown (the same tables,
the PNGs written next to it). All text is escaped. ``alignkit report`` (``page``) and the demos' run reports
(``run_summary``) build blocks; ``write_report`` writes them."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.errors import UserError

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1320px; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; }
.scroll { overflow-x: auto; margin: .5rem 0 1rem; }
table { border-collapse: collapse; font-size: .86rem; line-height: 1.3; }
th, td { border: 1px solid #d0d7de; padding: .18rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.text { white-space: pre-wrap; max-width: 36rem; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; max-width: 100%; } figcaption { font-size: .85rem; color: #57606a; }
img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: .4rem .7rem; }
.note { color: #57606a; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str
    cls: str = ""  # "warn" or "note"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    text_columns: tuple[int, ...] = ()  # long free text (prompts, generations): wrapped, whitespace kept


@dataclass
class Image:
    name: str  # PNG file name next to report.md
    title: str
    png: bytes = field(repr=False)


def write_report(out_dir: Path, blocks: list, title: str) -> dict[str, Path]:
    """The PNGs of ``blocks``, ``report.md`` and ``report.html`` in ``out_dir``; returns {"html": path, "md": path}."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file. Fix: give a directory for report.html, report.md and plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    for block in blocks:
        if isinstance(block, Image):
            (out_dir / block.name).write_bytes(block.png)
    paths = {"html": out_dir / "report.html", "md": out_dir / "report.md"}
    paths["html"].write_text(render_html(blocks, title), encoding="utf-8")
    paths["md"].write_text(render_markdown(blocks), encoding="utf-8")
    return paths


def render_html(blocks: list, title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_esc(title)}</title>",
           '<link rel="icon" href="data:,">', f"<style>{CSS}</style>", "</head>", "<body>"]  # fmt: skip
    in_figs = False
    for block in blocks:
        if in_figs and not isinstance(block, Image):
            out.append("</div>")
            in_figs = False
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{_esc(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            cls = f' class="{block.cls}"' if block.cls else ""
            out.append(f"<p{cls}>{_esc(block.text)}</p>")
        elif isinstance(block, Image):
            if not in_figs:
                out.append('<div class="figs">')
                in_figs = True
            data = base64.b64encode(block.png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(block.title)}">'
                       f"<figcaption>{_esc(block.title)}</figcaption></figure>")  # fmt: skip
        elif isinstance(block, Table):
            out.append('<div class="scroll"><table>')
            out.append("<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in block.headers) + "</tr></thead><tbody>")
            for row in block.rows:
                cells = [
                    f'<td class="text">{_esc(c)}</td>' if i in block.text_columns else f"<td>{_esc(c)}</td>"
                    for i, c in enumerate(row)
                ]
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table></div>")
    if in_figs:
        out.append("</div>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def render_markdown(blocks: list) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + _md(block.text), ""]
        elif isinstance(block, Text):
            lines += [("> " if block.cls == "warn" else "") + _md(block.text), ""]
        elif isinstance(block, Image):
            lines += [f"![{_md(block.title)}]({block.name})", ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            lines.append("|" + "---|" * len(block.headers))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
    return "\n".join(lines)


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _md(text) -> str:
    """Markdown text: HTML-escaped (no raw HTML gets through), whitespace collapsed."""
    return " ".join(html.escape(str(text), quote=False).split())


def _md_cell(text) -> str:
    return _md(text).replace("|", "\\|") or " "
