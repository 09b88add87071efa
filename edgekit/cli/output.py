"""Console output shared by the commands (the library itself never prints). See docs/errors.md."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, TypeVar

import typer
import typer.main
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument

if TYPE_CHECKING:
    from edgekit.manifest import Accuracy, Manifest
    from edgekit.progress import Progress

__all__ = [
    "MODE",
    "accuracy_facts",
    "accuracy_lines",
    "accuracy_text",
    "apply_conventions",
    "array_text",
    "camel",
    "camel_keys",
    "candidate_rows",
    "candidates_table",
    "console",
    "emit",
    "err_console",
    "json_output",
    "jsonable",
    "manifest_rows",
    "manifest_table",
    "note",
    "percent",
    "progress_line",
    "quiet_library",
    "rows_table",
]


def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    # Logs and pipes get wide lines rather than tables folded into 80 columns. No emoji codes: a name from outside
    # holding ':thumbs_up:' prints as written (markup=False and escape() leave emoji codes on).
    return Console(stderr=stderr, highlight=False, emoji=False, width=None if probe.is_terminal else 200)


console = _console()
err_console = _console(stderr=True)


@contextlib.contextmanager
def quiet_library() -> Iterator[None]:
    """The devices' own warnings (a failed step, a fault) are shown in the tables; keep them off the terminal unless -v."""
    root = logging.getLogger()
    lib = logging.getLogger("edgekit")
    before = lib.level
    if root.getEffectiveLevel() > logging.INFO:
        lib.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lib.setLevel(before)


def array_text(array: Any) -> Text:
    """An output array as tvmc prints it: at most 40 numbers (the rest elided), 5 digits."""
    import numpy as np

    return Text(np.array2string(array, threshold=40, precision=5))


def camel(name: str) -> str:
    """``snake_case`` -> ``camelCase``, the casing of every key --json prints (as AWS's APIs and the manifest)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camel_keys(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` with its own keys camelCased (not the keys of the values: those may be names, e.g. of outputs)."""
    return {camel(key): value for key, value in mapping.items()}


@contextlib.contextmanager
def progress_line(title: str) -> Iterator[Progress]:
    """A spinner with the current step on a terminal; plain lines otherwise (CI logs); nothing with -q.

    ``title`` and the steps are plain text (file and model names print as they are, never as markup)."""
    title = escape(title)
    if MODE.quiet:

        def silent(_msg: str) -> None:
            pass

        yield silent
    elif err_console.is_terminal:
        with err_console.status(title) as status:

            def update(msg: str) -> None:
                status.update(f"{title}: {escape(msg)}")

            yield update
    else:

        def plain(msg: str) -> None:
            err_console.print(f"  {msg}", soft_wrap=True, markup=False)

        yield plain


def plain(value: object, style: str = "") -> Text:
    """A string from a device or a file (a name, an error, a cause, a log line) as text: never read as rich markup.

    The one way such a string goes into a table, a live view or a line rich prints: ``[/red]``, ``[link=...]`` or
    ``[white on white]`` in it show as written (no MarkupError, no link, nothing hidden). ``None`` shows as '-'."""
    return Text("-" if value is None else str(value), style=style)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _err(value: Any) -> str:
    return "-" if value is None else f"{value:.1e}"


def manifest_rows(manifests: Sequence[Manifest]) -> list[dict[str, Any]]:
    """One row per artifact: the chosen backend and what was measured (what --json prints)."""
    rows = []
    for m in manifests:
        meas = m.measured
        gg = m.profile.greengrass
        rows.append(
            {
                "artifact": m.name,
                "target": m.profile.name,
                "platform": f"{gg['os']}/{gg['architecture']}",
                "backend": m.backend.name,
                "sizeBytes": m.size_bytes,
                "medianMs": meas.latency.median_ms if meas else None,
                "p90Ms": meas.latency.p90_ms if meas else None,
                "measuredOn": (meas.measured_on or meas.on) if meas else None,
                "maxAbsError": meas.accuracy.max_abs_error if meas else None,
                "top1Agreement": meas.accuracy.top1_agreement if meas else None,
                "accuracy": accuracy_facts(meas.accuracy, _chosen_budget(m)) if meas else None,
            }
        )
    return rows


def _chosen_budget(manifest: Manifest) -> str | None:
    return next((c.budget for c in manifest.candidates if c.status == "chosen"), None)


def percent(fraction: float) -> str:
    """``0.998`` -> ``'99.80 %'``: two decimals, more where rounding would show a fraction below 1 as 100 %."""
    digits = 2
    while digits < 8 and fraction < 1 and float(f"{fraction * 100:.{digits}f}") >= 100:
        digits += 1
    return f"{fraction * 100:.{digits}f} %"


def accuracy_facts(accuracy: Accuracy, budget: str | None) -> dict[str, Any]:
    """What a candidate scored (against labels or expected outputs when the samples carry them, beside the source
    model's score; agreement with the source always) and the budget it was judged by, in words."""
    facts: dict[str, Any] = {}
    if accuracy.top1_accuracy is not None:
        facts["top1Accuracy"] = accuracy.top1_accuracy
        facts["sourceTop1Accuracy"] = accuracy.source_top1_accuracy
    if accuracy.expected_error is not None:
        facts["expectedError"] = accuracy.expected_error
        facts["sourceExpectedError"] = accuracy.source_expected_error
    facts["top1Agreement"] = accuracy.top1_agreement
    facts["maxAbsError"] = accuracy.max_abs_error
    facts["samples"] = accuracy.samples
    facts["budget"] = budget
    return facts


def accuracy_text(facts: Mapping[str, Any] | None) -> str:
    """``top-1 93.07 % (source 92.86 %)``, ``error 0.0123 (source 0.0120)`` or ``agrees 99.80 %`` for a table cell."""
    if not facts:
        return "-"
    if facts.get("top1Accuracy") is not None:
        source = facts.get("sourceTop1Accuracy")
        return f"top-1 {percent(facts['top1Accuracy'])} (source {'-' if source is None else percent(source)})"
    if facts.get("expectedError") is not None:
        source = facts.get("sourceExpectedError")
        return f"error {facts['expectedError']:.3g} (source {'-' if source is None else f'{source:.3g}'})"
    if facts.get("top1Agreement") is not None:
        return f"agrees {percent(facts['top1Agreement'])}"
    return "-"


def manifest_table(manifests: Sequence[Manifest]) -> Table:
    """One row per artifact: the chosen backend and what was measured."""
    columns = {"artifact": "artifact", "target": "target", "platform": "platform", "backend": "backend",
               "sizeBytes": "size", "medianMs": "median ms", "p90Ms": "p90 ms", "measuredOn": "measured on",
               "maxAbsError": "max err", "accuracy": "accuracy"}  # fmt: skip
    formats: dict[str, Callable[[Any], str]] = {"sizeBytes": lambda v: f"{v / 1024:.1f} KiB", "medianMs": _ms,
               "p90Ms": _ms, "maxAbsError": _err, "accuracy": accuracy_text}  # fmt: skip
    return rows_table("artifacts", manifest_rows(manifests), columns, formats)


def candidate_rows(manifest: Manifest) -> list[dict[str, Any]]:
    return [
        {
            "candidate": c.name,
            "backend": c.backend,
            "status": c.status,
            "medianMs": c.measured.latency.median_ms if c.measured else None,
            "maxAbsError": c.measured.accuracy.max_abs_error if c.measured else None,
            "accuracy": accuracy_facts(c.measured.accuracy, c.budget) if c.measured else None,
            "reason": c.reason,
        }
        for c in manifest.candidates
    ]


def candidates_table(manifest: Manifest) -> Table:
    columns = {"candidate": "candidate", "backend": "backend", "status": "status", "medianMs": "median ms",
               "maxAbsError": "max err", "accuracy": "accuracy", "reason": "why"}  # fmt: skip
    formats: dict[str, Callable[[Any], str]] = {"medianMs": _ms, "maxAbsError": _err, "accuracy": accuracy_text}
    return rows_table(f"candidates for {manifest.name}", candidate_rows(manifest), columns, formats)


def accuracy_lines(manifest: Manifest) -> list[str]:
    """The chosen candidate's accuracy budget in words, and the warning when the evaluation set is too small for it."""
    lines = []
    budget = _chosen_budget(manifest)
    if budget:
        truth = manifest.samples.truth if manifest.samples is not None else None
        on = f"{manifest.samples.evaluation} evaluation samples with {truth}" if manifest.samples and truth else None
        lines.append(f"accuracy budget: {budget}" + (f" ({on})" if on else ""))
    return lines


# --------------------------------------------------------------------------- conventions every command shares


@dataclass
class OutputMode:
    """How the running command prints: set by -v/-q/--json, read by :func:`emit`, :func:`note` and progress_line."""

    json: bool = False
    quiet: bool = False
    verbose: int = 0


MODE = OutputMode()
_JSON_MARK = "edgekit_json"
F = TypeVar("F", bound=Callable[..., Any])


def json_output(fn: F) -> F:
    """Mark a command as taking ``--json``: it then prints its result as one JSON document (see :func:`emit`)."""
    fn.__dict__[_JSON_MARK] = True
    return fn


def reset_mode() -> None:
    """Back to the defaults (one CLI call in a process that makes several, like the tests)."""
    MODE.json, MODE.quiet, MODE.verbose = False, False, 0
    apply_logging()


def apply_logging() -> None:
    """Log level from -v/-q: warnings by default, -v info, -vv debug, -q errors only."""
    level = logging.ERROR if MODE.quiet else {0: logging.WARNING, 1: logging.INFO}.get(MODE.verbose, logging.DEBUG)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: dataclasses and pydantic models as objects, paths as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return jsonable(dump(mode="json", by_alias=True))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    return value


def emit(facts: Any, *shown: RenderableType) -> None:
    """Print a command's result: with --json ``facts`` as one JSON document on stdout, otherwise ``shown`` (the
    tables and lines made from the same facts).

    A ``str`` in ``shown`` is plain text, printed as written (``markup=False``): the paths, names and messages in it
    may hold ``[/]`` or ``[bold]``. A line with styles is a :class:`~rich.text.Text` (``Text.assemble``)."""
    if MODE.json:
        console.file.write(json.dumps(jsonable(facts), indent=2, sort_keys=False) + "\n")
        return
    for item in shown:
        if isinstance(item, str):
            console.print(item, soft_wrap=True, markup=False)
        else:
            console.print(item)


def note(message: str) -> None:
    """A line beside the result (a hint, what happens next): on stderr as plain text, left out with -q."""
    if not MODE.quiet:
        err_console.print(message, soft_wrap=True, markup=False)


def rows_table(
    title: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Mapping[str, str],
    formats: Mapping[str, Callable[[Any], str]] | None = None,
) -> Table:
    """A table of ``rows`` (the dicts --json prints): ``columns`` maps each key to its header, ``formats`` a key
    to how its value is shown (default: as it is, '-' for none)."""
    table = Table(title=escape(title), title_justify="left")
    for header in columns.values():
        table.add_column(header)
    shown = formats or {}
    for row in rows:  # cells are plain text: names and paths from outside print as they are
        table.add_row(*(Text(shown.get(key, _cell)(row.get(key))) for key in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _set_verbose(ctx: Any, _param: Any, value: int) -> None:
    if value:
        MODE.verbose = max(MODE.verbose, value)
        apply_logging()


def _set_quiet(ctx: Any, _param: Any, value: bool) -> None:
    if value:
        MODE.quiet = True
        apply_logging()


def _set_json(ctx: Any, _param: Any, value: bool) -> None:
    if value:
        MODE.json = True


_templates = typer.Typer()


@_templates.command()
def _conventions(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, show_default=False, help="more log lines (-vv: debug)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="only the result and errors: no progress lines, notes or warnings"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON document (the facts the tables show)"),
) -> None:
    """Templates of the options every command gets (copied onto each by :func:`apply_conventions`)."""


def _template_options() -> dict[str, Any]:
    params = typer.main.get_command(_templates).params
    return {p.name: p for p in params if p.name}


def apply_conventions(command: Any) -> Any:
    """Give every command of the click tree under ``command`` -v/-q (and --json where marked with
    :func:`json_output`), and help without bare type metavars (``<str>``, ``<list[str]>``)."""
    templates = _template_options()
    callbacks = {"verbose": _set_verbose, "quiet": _set_quiet, "as_json": _set_json}
    todo = [command]
    while todo:
        cmd = todo.pop()
        subcommands = getattr(cmd, "commands", None)
        if subcommands is not None:
            todo.extend(subcommands.values())
        else:
            wanted = ["verbose", "quiet"] + (["as_json"] if getattr(cmd.callback, _JSON_MARK, False) else [])
            taken = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            for name in wanted:
                option = copy.copy(templates[name])
                option.expose_value = False
                option.callback = callbacks[name]
                if not taken.intersection(option.opts):
                    cmd.params.append(option)
        for param in cmd.params:
            _tidy_metavar(param)
        help_option = cmd.get_help_option(typer.Context(cmd)) if hasattr(cmd, "get_help_option") else None
        if help_option is not None:
            _tidy_metavar(help_option)
    return command


class _Argument(TyperArgument):
    """An argument shown by its name (MODEL, ARTIFACTS...) in help, without typer's ``<str>`` type label."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _rich_display_name(self) -> str:
        return str(self.metavar) + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        name = self._rich_display_name()
        return name if self.required else f"[{name}]"


def _tidy_metavar(param: Any) -> None:
    if isinstance(param, TyperArgument):
        if param.metavar is None:
            param.metavar = param.name.upper()
        param.__class__ = _Argument
    elif param.metavar is None:
        param.metavar = "" if (param.is_flag or param.count) else param.name.upper()
