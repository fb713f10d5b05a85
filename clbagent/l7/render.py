"""The jinja2 side: templates in ``clbagent/templates/`` (package data), autoescape off, with the
quoting function as the ``q`` filter (and ``literal`` for text where ``$`` must not appear)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from .quote import literal, quote

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"  # package data: works from a wheel


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["q"] = quote
    env.filters["literal"] = literal
    return env


def render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
