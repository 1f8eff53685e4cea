"""
The TOML configuration file: every command-line option has a twin here,
spelled with underscores (C{--idle-timeout} is C{idle_timeout}).  The
command line wins over the file; lists (C{pop3}, C{auth}, ...) given on the
command line replace the file's list.
"""

from __future__ import annotations

import tomllib
from typing import Any

from twisted.python import usage

# key -> (type, repeatable)
LIST_KEYS = {"pop3", "pop3s", "auth", "lmtp", "exempt_networks"}
SCALAR_KEYS: dict[str, type | tuple[type, ...]] = {
    "store": str,
    "implementation": str,
    "greeting": str,
    "hostname": str,
    "idle_timeout": (int, float),
    "login_timeout": (int, float),
    "auth_failure_delay": (int, float),
    "max_auth_failures": int,
    "max_bad_commands": int,
    "tls_cert": str,
    "tls_key": str,
    "allow_plaintext_auth": bool,
    "auth_cache_ttl": (int, float),
    "auth_cache_negative_ttl": (int, float),
    "workers": int,
    "max_connections": int,
    "max_connections_per_ip": int,
}


def load(path: str) -> dict[str, Any]:
    """
    Read and check C{path}.

    @raise usage.UsageError: naming the file and the offending key.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"cannot read config file {path}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"config file {path}: {e}")
    section = data.get("popgate", data)
    if not isinstance(section, dict):
        raise usage.UsageError(f"config file {path}: [popgate] must be a table")
    checked: dict[str, Any] = {}
    for key, value in section.items():
        if key in LIST_KEYS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise usage.UsageError(f"config file {path}: {key} must be a list of strings")
        elif key in SCALAR_KEYS:
            wanted = SCALAR_KEYS[key]
            if isinstance(value, bool) and wanted is not bool:
                raise usage.UsageError(f"config file {path}: {key} has the wrong type")
            if not isinstance(value, wanted):
                raise usage.UsageError(f"config file {path}: {key} has the wrong type")
        else:
            raise usage.UsageError(f"config file {path}: unknown key {key!r}")
        checked[key] = value
    return checked
