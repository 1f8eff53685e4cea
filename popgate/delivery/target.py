"""
The store's delivery interface: the store itself when it provides
L{IDeliveryTarget}, or an adapter for stores that do not yet (Maildir).
"""

from __future__ import annotations

from typing import Any

from popgate.interfaces import IDeliveryTarget


def delivery_target(store: Any, reactor: Any = None) -> Any:
    """
    @return: an L{IDeliveryTarget} writing into C{store}.
    @raise ValueError: the store cannot accept mail.
    """
    if IDeliveryTarget.providedBy(store):
        return store
    from popgate.stores.maildir import MaildirStore

    if isinstance(store, MaildirStore):
        from popgate.stores.maildir_delivery import MaildirDeliveryTarget

        return MaildirDeliveryTarget(store, reactor)
    raise ValueError(f"the {type(store).__name__} mail store cannot accept deliveries")
