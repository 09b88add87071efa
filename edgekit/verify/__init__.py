"""Verification of compiled artifacts by running them on an emulated target.

Nothing heavy is imported here: the submodules (e.g. :mod:`edgekit.verify.sysroot`)
are imported explicitly by the code that needs them.
"""

from __future__ import annotations

__all__: list[str] = []
