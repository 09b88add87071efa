"""edgekit rpc-server: TVM's RPC server on a device, able to time whole edgekit artifacts. See docs/compile.md
(measured on the target)."""

from __future__ import annotations

import typer

from edgekit import api
from edgekit.cli.output import err_console

__all__ = ["register", "rpc_server"]


def _say(message: str) -> None:
    err_console.print(f"rpc-server: {message}", soft_wrap=True, markup=False, highlight=False)
    err_console.file.flush()


def rpc_server(
    tracker: str | None = typer.Option(
        None, "--tracker", metavar="HOST:PORT", help="the TVM RPC tracker to register with (as tvm.exec.rpc_server)"
    ),
    key: str = typer.Option("", "--key", metavar="KEY", help="the key to register under: what 'compile --rpc-key' asks for"),
    host: str = typer.Option("0.0.0.0", "--host", help="the address to listen on"),
    port: int = typer.Option(9090, "--port", min=1, max=65535, help="the first port to try (and the next 109, as TVM's server)"),
) -> None:
    """Run TVM's RPC server on this device until Ctrl-C, plus edgekit.time_artifact: 'edgekit compile --rpc-tracker
    HOST:PORT --rpc-key KEY' then times every candidate here — ONNX Runtime ones too — loaded with its self-test, as
    the device would run it. Needs TVM (edgekit\\[tvm]). Like TVM's own server it runs what it is sent: a trusted network only."""
    api.rpc_server(tracker=tracker, key=key, host=host, port=port, progress=_say)


def register(app: typer.Typer) -> None:
    app.command("rpc-server")(rpc_server)
