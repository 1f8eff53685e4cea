"""
Finding token validator plugins (L{ITokenValidatorFactory}) by the prefix
of C{--oauth TYPE:ARGS}, as L{popgate.stores.registry} finds stores.
"""

from __future__ import annotations

from typing import Any

from twisted.plugin import getPlugins

from popgate.interfaces import ITokenValidator, ITokenValidatorFactory
from popgate.optional import is_missing_dependency, missing_library

__all__ = ["describe_validators", "make_validator", "validator_factories"]


def validator_factories() -> dict[str, Any]:
    """Every installed validator plugin, by type name."""
    from twisted import plugins

    return {f.validatorType: f for f in getPlugins(ITokenValidatorFactory, plugins)}


def make_validator(description: str, reactor: Any) -> Any:
    """
    The validator C{description} (C{jwt:jwks_file=...}) names, on C{reactor}.

    @raise ValueError: one line: an unknown type, bad arguments, or a
        missing optional library (PyJWT for C{jwt:}).
    """
    kind, _, argstring = description.partition(":")
    factories = validator_factories()
    factory = factories.get(kind)
    if factory is None:
        known = ", ".join(sorted(factories)) or "none"
        raise ValueError(f"unknown token validator {kind!r} (known: {known})")
    try:
        validator = factory.makeValidator(argstring, reactor)
    except ImportError as e:
        if not is_missing_dependency(e):
            raise
        raise ValueError(f"{kind}: {missing_library(e)}") from None
    if not ITokenValidator.providedBy(validator):
        raise ValueError(f"{kind}: the plugin made no ITokenValidator")
    return validator


def describe_validators() -> str:
    """The text of C{--help-oauth}."""
    lines = ["OAuth token validators (--oauth TYPE:ARGS):", ""]
    for name, factory in sorted(validator_factories().items()):
        lines.append(f"  {name}: {factory.validatorHelp}")
        lines.append(f"      {factory.argStringFormat}")
    return "\n".join(lines)
