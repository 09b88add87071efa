"""edgekit deployment list / cancel. See docs/publishing.md."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
