"""The Markdown report: the same tables as the HTML one, for terminals, pull requests and
CI logs."""

from __future__ import annotations

import re

import jinja2

from safebench import registry
from safebench.reports.runs import ReportModel

TEMPLATE = "report.md.jinja2"
# Characters that would end a table cell or start Markdown/HTML markup inside one.
# Brackets stay as they are (intervals are written [low, high]); only "](" is broken up,
# which is what would turn model text into a link.
_MD_SPECIAL = re.compile(r"([\\`*_|#])")


def md_cell(value) -> str:
    """Make any text safe inside a Markdown table cell or list item: one line, markup
    characters escaped, and `<`/`>`/`&` as entities so renderers that allow inline HTML
    (most do) show model text instead of interpreting it."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text).replace("](", "]\\(")
    return re.sub(r"\s*[\r\n]+\s*", " \u23ce ", text).strip()


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(registry.reports_dir() / "templates"),
        autoescape=False,  # Markdown, not HTML: escaping is the `md` filter's job
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_cell
    return env


def render_markdown(model: ReportModel, figures: list) -> str:
    text = environment().get_template(TEMPLATE).render(model=model, figures=figures)
    # Headings and paragraphs need a blank line before them to render; collapse longer runs.
    text = re.sub(r"([^\n])\n(#|Suites with no samples|- A response)", r"\1\n\n\2", text)
    return re.sub(r"\n{3,}", "\n\n", text)
