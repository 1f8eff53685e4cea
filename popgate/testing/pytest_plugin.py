"""
The pytest plugin of L{popgate.testing} (the C{pytest11} entry point
C{popgate.testing.pytest_plugin}): one fresh server per test, on a loopback port
(C{pop3_server}, a L{POP3TestServer}) or in memory (C{pop3_memory_server},
a L{MemoryPOP3Server}: no sockets, no threads, time on a fake clock).

Override C{pop3_server_config} to give either users, mailboxes or faults:

    @pytest.fixture
    def pop3_server_config():
        return {"users": {"alice": "pw"}, "mailboxes": {"alice": [b"..."]}}

Twisted is imported only when a test uses the fixture, so merely having
popgate installed changes nothing for other test suites (nor which reactor
they install).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def pop3_server_config() -> dict[str, Any]:
    """Keyword arguments for L{popgate.testing.POP3TestServer} and
    L{popgate.testing.MemoryPOP3Server}."""
    return {}


@pytest.fixture
def pop3_server(pop3_server_config: dict[str, Any]) -> Iterator[Any]:
    """A running L{popgate.testing.POP3TestServer}; stopped after the test."""
    from popgate.testing import POP3TestServer

    with POP3TestServer(**pop3_server_config) as server:
        yield server


@pytest.fixture
def pop3_memory_server(pop3_server_config: dict[str, Any]) -> Iterator[Any]:
    """A L{popgate.testing.MemoryPOP3Server}; its sessions dropped after the test."""
    from popgate.testing import MemoryPOP3Server

    with MemoryPOP3Server(**pop3_server_config) as server:
        yield server
