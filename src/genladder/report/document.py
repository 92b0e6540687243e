"""A small document model rendered to both Markdown and standalone HTML.

The report is a list of blocks (headings, paragraphs, tables, figure rows); each renderer
turns the same blocks into its format, so report.md and index.html have the same content.
Image paths are relative to the report folder.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: str
    caption: str


@dataclass
class FigureRow:
    """Figures shown side by side."""

    figures: list[Figure] = field(default_factory=list)


Block = Heading | Paragraph | Table | FigureRow


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block]) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            if block.caption:
                lines += [block.caption, ""]
            lines.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            lines.append("|" + "|".join(" --- " for _ in block.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, FigureRow):
            # One table row keeps the figures side by side in Markdown viewers.
            if block.figures:
                lines.append("| " + " | ".join(_md_cell(f.caption) for f in block.figures) + " |")
                lines.append("|" + "|".join(" --- " for _ in block.figures) + "|")
                lines.append("| " + " | ".join(f"![{_md_cell(f.caption)}]({f.path})" for f in block.figures) + " |")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; margin-bottom: 1.5rem; }
figure { margin: 0; }
figure img { image-rendering: pixelated; max-width: 100%; }
figcaption { font-size: 0.85rem; color: #555; }
.verdict-holds { color: #1a7f37; font-weight: bold; }
.verdict-fails { color: #b42318; font-weight: bold; }
.verdict-inconclusive { color: #9a6700; font-weight: bold; }
.verdict-not-measured { color: #666; font-weight: bold; }
"""

VERDICT_CLASSES = {"holds": "verdict-holds", "fails": "verdict-fails", "inconclusive": "verdict-inconclusive", "not measured": "verdict-not-measured"}


def _html_cell(text: str, tag: str) -> str:
    css = VERDICT_CLASSES.get(str(text))
    attribute = f' class="{css}"' if css else ""
    return f"<{tag}{attribute}>{html.escape(str(text))}</{tag}>"


def to_html(title: str, blocks: list[Block]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 2), 6)
            parts.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append("<table>")
            if block.caption:
                parts.append(f"<caption>{html.escape(block.caption)}</caption>")
            parts.append("<tr>" + "".join(_html_cell(h, "th") for h in block.headers) + "</tr>")
            parts += ["<tr>" + "".join(_html_cell(c, "td") for c in row) + "</tr>" for row in block.rows]
            parts.append("</table>")
        elif isinstance(block, FigureRow):
            parts.append('<div class="figures">')
            for fig in block.figures:
                parts.append(
                    f'<figure><img src="{html.escape(fig.path, quote=True)}" alt="{html.escape(fig.caption, quote=True)}">'
                    f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
                )
            parts.append("</div>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
