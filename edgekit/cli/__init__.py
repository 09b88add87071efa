"""The ``edgekit`` command line: parses, calls the API, prints. One module per command group.

Conventions every command shares (-v/-q, --json, help, project defaults) are in output.py and here.
See docs/architecture.md (API first, CLI thin) and docs/cli.md.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import typer
import typer.main
from rich.text import Text

from edgekit._version import __version__
from edgekit.cli import (
    advise_cmd,
    agent_cmd,
    compile_cmd,
    demo_cmd,
    deployment_cmd,
    endpoint_cmd,
    fleet_cmd,
    package_cmd,
    publish_cmd,
    recipe_cmd,
    rpc_cmd,
    run_cmd,
    serve_cmd,
    targets_cmd,
    verify_cmd,
)
from edgekit.cli.output import MODE, apply_conventions, apply_logging, console, err_console, plain, reset_mode
from edgekit.errors import EdgekitError, cause_chain, exit_code_for

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgekit",
    help="Compile a model for an edge device, package it for Greengrass v2, and roll it out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)

# Project-file setting -> the (command path, parameter) it fills; see edgekit.project and docs/cli.md.
_AWS = ("publish", "deploy", "deployment list", "deployment cancel")
_LOCAL = (
    "publish",
    "deploy",
    "simulate",
    "fleet status",
    "fleet logs",
    "fleet serve",
    "fleet add-device",
    "deployment list",
    "deployment cancel",
)
PROJECT_DEFAULTS: dict[str, list[tuple[str, str]]] = {
    "target": [("compile", "target")],
    "pipeline": [("compile", "pipeline")],
    "backend": [("compile", "backend")],
    "artifacts": [("compile", "output")],
    "component": [("package", "name")],
    "publisher": [("package", "publisher")],
    "build": [("package", "output"), ("publish", "build"), ("simulate", "build")],
    "bucket": [("publish", "bucket")],
    "gdk_bucket_naming": [("publish", "gdk_bucket_naming")],
    "region": [(c, "region") for c in _AWS],
    "profile": [(c, "profile") for c in _AWS],
    "endpoint_url": [(c, "endpoint_url") for c in _AWS],
    "account": [("deploy", "account")],
    "state": [(c, "state") for c in _LOCAL],
    "fleet": [("deploy", "fleet"), ("simulate", "fleet")],
}


def _show_version(value: bool) -> None:
    if value:
        console.print(f"edgekit {__version__}")
        raise typer.Exit()


def _default_map() -> dict[str, Any]:
    from edgekit.project import find_project

    project = find_project()
    if project is None:
        return {}
    tree: dict[str, Any] = {}
    for key, value in project.settings.model_dump(exclude_none=True).items():
        for path, param in PROJECT_DEFAULTS[key]:
            node = tree
            for part in path.split():
                node = node.setdefault(part, {})
            node[param] = value
    if "build" in project.settings.model_fields_set and project.settings.build:
        tree.setdefault("deploy", {})["recipes"] = f"{project.settings.build}/recipes"
    return tree


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, show_default=False, help="more log lines (-vv: debug)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="only the result and errors"),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="print edgekit's version and exit"
    ),
) -> None:
    MODE.verbose, MODE.quiet = verbose, quiet
    apply_logging()
    # Defaults from edgekit.toml / [tool.edgekit]: click fills a flag from them when neither it nor its
    # environment variable was given.
    ctx.default_map = {**_default_map(), **(ctx.default_map or {})}


compile_cmd.register(app)
targets_cmd.register(app)
run_cmd.register(app)
verify_cmd.register(app)
demo_cmd.register(app)
package_cmd.register(app)
recipe_cmd.register(app)
publish_cmd.register(app)
deployment_cmd.register(app)
fleet_cmd.register(app)
serve_cmd.register(app)
endpoint_cmd.register(app)
advise_cmd.register(app)
agent_cmd.register(app)
rpc_cmd.register(app)

_command: Any = None


def command() -> Any:
    """The click command tree, with the shared conventions applied (built once)."""
    global _command
    if _command is None:
        _command = apply_conventions(typer.main.get_command(app))
    return _command


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: every command cleans up what it started and wrote


def main(argv: list[str] | None = None) -> int:
    """Entry point: every EdgekitError becomes one 'error:' line and its exit code; SIGTERM is handled like Ctrl-C."""
    reset_mode()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        rc = command().main(args=argv, prog_name="edgekit", standalone_mode=False)
        if isinstance(rc, int) and rc:  # typer returns e.g. 130 for Ctrl-C instead of raising
            return rc
    except EdgekitError as exc:
        for line in getattr(exc, "lines", ()):  # a refused pre-flight: one line per device and reason, then the error
            err_console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
        if MODE.verbose:  # -v: the whole chain of causes, each message whole (a linker's output, a converter's)
            for cause in cause_chain(exc):
                err_console.print(f"caused by {cause}", highlight=False, soft_wrap=True, markup=False)
        err_console.print(Text("error: ", style="bold red").append_text(plain(str(exc))), highlight=False, soft_wrap=True)
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
