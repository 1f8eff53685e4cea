"""C{popgate --version}: what is installed, one line each, for bug reports."""

from __future__ import annotations

import platform
from importlib import metadata

from OpenSSL import SSL

__all__ = ["versions"]


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def versions() -> list[str]:
    """popgate, Twisted, Python and the OpenSSL popgate's TLS runs on."""
    # pyOpenSSL's OpenSSL (cryptography's own), not the one Python's ssl links.
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode("ascii", "replace")
    return [
        f"popgate {_version('popgate')}",
        f"Twisted {_version('twisted')}",
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"{openssl} (pyOpenSSL {_version('pyopenssl')}, cryptography "
        f"{_version('cryptography')})",
    ]
