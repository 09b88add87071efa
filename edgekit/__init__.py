"""edgekit: compile a model for an edge device, package it for Greengrass v2, roll it out.

Every function of :mod:`edgekit.api` is here too: one per stage (:func:`compile`, :func:`run`, :func:`package`,
:func:`publish`, :func:`deploy` to AWS or the local fleet, :func:`simulate`, :func:`serve`, :func:`advise`...), the
same calls the ``edgekit`` command makes. Importing edgekit is cheap: TVM, PyTorch, scikit-learn and boto3 load
only when used. See docs/index.md.
"""

from __future__ import annotations

from edgekit._version import __version__
from edgekit.api import (
    add_device,
    advise,
    cancel_deployment,
    compile,
    delete_endpoint,
    deploy,
    deploy_endpoint,
    deployment_spec,
    deployments,
    fleet_page,
    fleet_status,
    invoke_endpoint,
    invoke_endpoint_async,
    lint_recipes,
    load,
    logs,
    package,
    publish,
    published_versions,
    rpc_server,
    run,
    run_agent,
    run_demo,
    serve,
    serve_fleet,
    simulate,
    targets,
    verify_artifact,
)
from edgekit.errors import EdgekitError

# edgekit.api's __all__, plus on purpose __version__ and EdgekitError (tests/cli/test_cli_layout.py holds them together)
__all__ = [
    "EdgekitError",
    "__version__",
    "add_device",
    "advise",
    "cancel_deployment",
    "compile",
    "delete_endpoint",
    "deploy",
    "deploy_endpoint",
    "deployment_spec",
    "deployments",
    "fleet_page",
    "fleet_status",
    "invoke_endpoint",
    "invoke_endpoint_async",
    "lint_recipes",
    "load",
    "logs",
    "package",
    "publish",
    "published_versions",
    "rpc_server",
    "run",
    "run_agent",
    "run_demo",
    "serve",
    "serve_fleet",
    "simulate",
    "targets",
    "verify_artifact",
]
