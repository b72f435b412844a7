"""The HTML report: one self-contained file (figures embedded as base64 PNG, inline CSS, the
sample explorer's one inline script and its data), rendered by jinja2 with autoescaping on
because it shows model text verbatim."""

from __future__ import annotations

import jinja2

from safebench import registry
from safebench.reports.runs import ReportModel

TEMPLATE = "report.html.jinja2"


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(registry.reports_dir() / "templates"),
        autoescape=True,  # on for every template: model responses can contain any markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(model: ReportModel, figures: list, explorer) -> str:
    """`explorer`: the sample explorer and worst cases (reports.explorer.build_explorer)."""
    return environment().get_template(TEMPLATE).render(model=model, figures=figures, explorer=explorer)
