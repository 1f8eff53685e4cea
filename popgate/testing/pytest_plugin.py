"""
The pytest plugin of L{popgate.testing} (the C{pytest11} entry point
C{popgate}): a C{pop3_server} fixture, one fresh server per test.

Override C{pop3_server_config} to give it users, mailboxes or faults:

    @pytest.fixture
    def pop3_server_config():
        return {"users": {"alice": "pw"}, "mailboxes": {"alice": [b"..."]}}

Twisted is imported only when a test uses the fixture, so merely having
popgate installed changes nothing for other test suites (nor which reactor
they install).
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest


@pytest.fixture
def pop3_server_config() -> dict[str, Any]:
    """Keyword arguments for L{popgate.testing.POP3TestServer}."""
    return {}


@pytest.fixture
def pop3_server(pop3_server_config: dict[str, Any]) -> Iterator[Any]:
    """A running L{popgate.testing.POP3TestServer}; stopped after the test."""
    from popgate.testing import POP3TestServer

    with POP3TestServer(**pop3_server_config) as server:
        yield server
