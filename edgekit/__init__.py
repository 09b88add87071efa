"""edgekit: compile a model for an edge device, package it for Greengrass v2, roll it out.

One function per stage (:mod:`edgekit.api`): :func:`compile`, :func:`load`, :func:`targets`, :func:`package`,
:func:`publish` and :func:`deploy` (AWS or the local fleet), :func:`simulate`.
Importing edgekit is cheap: TVM, PyTorch, scikit-learn and boto3 load only when used. See docs/index.md.
"""

from __future__ import annotations

from edgekit._version import __version__
from edgekit.api import advise, compile, deploy, load, package, publish, serve, simulate, targets
from edgekit.errors import EdgekitError

__all__ = [
    "EdgekitError",
    "__version__",
    "advise",
    "compile",
    "deploy",
    "load",
    "package",
    "publish",
    "serve",
    "simulate",
    "targets",
]
