"""The ``edgekit`` command line: parses, calls the API, prints. One module per command group."""

from __future__ import annotations

import logging
import sys

import typer

from edgekit.cli import (
    advise_cmd,
    compile_cmd,
    demo_cmd,
    endpoint_cmd,
    fleet_cmd,
    package_cmd,
    publish_cmd,
    recipe_cmd,
    run_cmd,
    serve_cmd,
    targets_cmd,
    verify_cmd,
)
from edgekit.cli.output import console, err_console
from edgekit.errors import EdgekitError, exit_code_for

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgekit",
    help="Compile a model for an edge device, package it for Greengrass v2, and roll it out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each stage does."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


compile_cmd.register(app)
targets_cmd.register(app)
run_cmd.register(app)
verify_cmd.register(app)
demo_cmd.register(app)
package_cmd.register(app)
recipe_cmd.register(app)
publish_cmd.register(app)
fleet_cmd.register(app)
serve_cmd.register(app)
endpoint_cmd.register(app)
advise_cmd.register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every EdgekitError becomes one 'error:' line and its exit code."""
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:  # typer returns e.g. 130 for Ctrl-C instead of raising
            return rc
    except EdgekitError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except Exception as exc:
        # Usage errors: typer raises click's (or its bundled copy's) exception classes; both have show()/exit_code.
        show = getattr(exc, "show", None)
        code = getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        if type(exc).__name__ == "Abort":
            return 1
        raise
    finally:
        console.file.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
