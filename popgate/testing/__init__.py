"""
A POP3 server for other people's tests: a real popgate, in process, on a
free loopback port, with users and mail in memory and faults on demand.

    from popgate.testing import POP3TestServer

    with POP3TestServer(users={"alice": "pw"},
                        mailboxes={"alice": [b"Subject: hi\\r\\n\\r\\nhello\\r\\n"]}) as server:
        client = poplib.POP3(server.host, server.port)
        ...
        server.faults.login_error = "IN-USE"

With pytest, the C{pop3_server} fixture (L{popgate.testing.pytest_plugin})
gives one such server per test.
"""

from popgate.testing.faults import LOGIN_ERRORS, Faults, InjectedFault
from popgate.testing.server import TEST_SETTINGS, POP3TestServer

__all__ = ["LOGIN_ERRORS", "TEST_SETTINGS", "Faults", "InjectedFault", "POP3TestServer"]
