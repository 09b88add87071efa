"""Local AWS endpoints for tests: a moto server over real HTTP, and a scripted HTTP endpoint.

* :class:`MotoServer` runs moto's server (S3, STS, IoT...) on 127.0.0.1 and a free port, in a
  thread of the test process. Tests point boto3 at :attr:`MotoServer.url` with dummy credentials.
* :class:`ScriptedEndpoint` answers each request with the next canned HTTP response and records
  what it got: for services moto lacks (greengrassv2) when a test needs the real HTTP path, e.g.
  to see botocore's retries, which ``botocore.stub.Stubber`` bypasses.

Use the fixtures by binding them to names in a test module (pytest finds fixtures there)::

    import aws_server

    moto_server = aws_server.moto_server
    aws_env = aws_server.aws_env
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

REGION = "us-west-2"
ACCOUNT = "123456789012"  # moto's default account


class MotoServer:
    """moto's server on 127.0.0.1:<free port>, in a daemon thread."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget every bucket, object and thing (moto's reset API)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> MotoServer:
    """Dummy credentials, region us-west-2, no real AWS config, and an empty moto."""
    empty = tmp_path_factory.mktemp("aws-config")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "EDGEKIT_AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    moto_server.reset()
    return moto_server


@dataclass
class Reply:
    status: int
    body: dict[str, object] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    body: bytes


class ScriptedEndpoint:
    """An HTTP endpoint on 127.0.0.1 that plays :class:`Reply` objects in order (JSON bodies)."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.seen: list[Seen] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                endpoint.seen.append(Seen(self.command, self.path, self.rfile.read(length)))
                reply = endpoint.replies.pop(0) if endpoint.replies else Reply(500, {"message": "script exhausted"})
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def aws_json_error(status: int, code: str, message: str) -> Reply:
    """A rest-json error reply as AWS sends it (``x-amzn-ErrorType`` names the code)."""
    return Reply(status, {"message": message}, {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/"})
