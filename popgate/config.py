"""
The TOML configuration file: every setting of L{popgate.settings} that
the file may give is a key, spelled with underscores (C{--idle-timeout} is
C{idle_timeout}), in a C{[popgate]} table or at the top level.  Unknown
keys and tables are an error, so a typo never goes unnoticed; how the
file and the command line combine is L{popgate.settings.resolve}.
"""

from __future__ import annotations

import difflib
import tomllib
from typing import Any

from twisted.python import usage

from popgate.settings import SETTINGS, Setting

KEYS: dict[str, Setting] = {s.key: s for s in SETTINGS if s.toml}


def _section(data: dict[str, Any], path: str) -> dict[str, Any]:
    """The table that holds the settings: C{[popgate]} when there is one
    (and then nothing else may be there), else the top level."""
    if "popgate" not in data:
        for key, value in data.items():
            if isinstance(value, dict):
                raise usage.UsageError(f"config file {path}: unknown table [{key}]")
        return data
    section = data["popgate"]
    if not isinstance(section, dict):
        raise usage.UsageError(f"config file {path}: [popgate] must be a table")
    for key, value in data.items():
        if key == "popgate":
            continue
        if isinstance(value, dict):
            raise usage.UsageError(f"config file {path}: unknown table [{key}]")
        raise usage.UsageError(f"config file {path}: {key!r} is outside the [popgate] table")
    return section


def _did_you_mean(key: str) -> str:
    """C{" (did you mean 'store'?)"} for the key C{key} is closest to, if
    any is close: most unknown keys are typos."""
    close = difflib.get_close_matches(key.replace("-", "_"), KEYS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(setting: Setting, value: Any, path: str) -> Any:
    """C{value}, if TOML gave it the type the setting takes."""
    key = setting.key
    if setting.kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise usage.UsageError(f"config file {path}: {key} must be a list of strings")
        return value
    if setting.parse is not None and type(value) is int:
        return str(value)  # expire = 31
    wanted: tuple[type, ...] = {"text": (str,), "int": (int,), "float": (int, float),
                                "flag": (bool,)}[setting.kind]
    if isinstance(value, bool) != (setting.kind == "flag") or not isinstance(value, wanted):
        raise usage.UsageError(f"config file {path}: {key} has the wrong type")
    return value


def load(path: str) -> dict[str, Any]:
    """
    Read and check C{path}: the values it gives, by key.

    @raise usage.UsageError: naming the file and the offending key.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"config file {path}: {e}") from None
    checked: dict[str, Any] = {}
    for key, value in _section(data, path).items():
        setting = KEYS.get(key)
        if setting is None:
            raise usage.UsageError(f"config file {path}: unknown key {key!r}{_did_you_mean(key)}")
        checked[key] = _check(setting, value, path)
    return checked
