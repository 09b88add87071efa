"""Errors of the edge runtime (exit code 23). See docs/errors.md."""

from __future__ import annotations

from edgekit.errors import EdgekitError

__all__ = ["EdgeError", "FallbackError", "FallbackUnavailable", "SpoolFullError"]


class EdgeError(EdgekitError):
    """The edge runtime could not do what was asked (spool, fallback, publish)."""

    exit_code = 23


class SpoolFullError(EdgeError):
    """The spool holds its maximum and its policy is to reject new items (nothing already in it is lost)."""


class FallbackError(EdgeError):
    """The cloud endpoint did not answer usefully; ``kind`` says how: ``unreachable``, ``timeout``, ``http``,
    ``bad_reply`` (counted by kind in the inference component's window summaries)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class FallbackUnavailable(EdgeError):
    """The cloud fallback is not tried: its circuit breaker is open after repeated failures."""

    kind = "breaker_open"
