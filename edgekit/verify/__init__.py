"""Verification of compiled artifacts by running them on an emulated target (``edgekit verify``).

Nothing heavy is imported here: the submodules are imported explicitly by the code that needs them.
See docs/artifact.md.
"""

from __future__ import annotations

__all__: list[str] = []
