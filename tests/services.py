"""
Helpers for tests that need something outside Python: a program on PATH,
or a server reachable by an environment variable.
"""

from __future__ import annotations

import shutil

import pytest


def need_program(name: str, package: str) -> str:
    """Return the path of C{name}, or skip saying which Debian package brings it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found (apt-get install {package})")
    return path


def need(condition: object, reason: str) -> None:
    """Skip with C{reason} unless C{condition} is true."""
    if not condition:
        pytest.skip(reason)
