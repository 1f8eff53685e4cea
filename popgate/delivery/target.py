"""
The store's delivery interface: a store takes mail when it provides
L{IDeliveryTarget} itself (Maildir, mbox and the in-memory store do).
"""

from __future__ import annotations

from typing import Any

from popgate.interfaces import IDeliveryTarget


def delivery_target(store: Any) -> Any:
    """
    @return: C{store}, checked to be an L{IDeliveryTarget}.
    @raise ValueError: the store cannot accept mail.
    """
    if IDeliveryTarget.providedBy(store):
        return store
    raise ValueError(f"the {type(store).__name__} mail store cannot accept deliveries")
