"""
POP3 servers for other people's tests: a real popgate with users and mail
in memory and faults on demand, either on a free loopback port in this
process (L{POP3TestServer}) or with no sockets and no threads at all
(L{MemoryPOP3Server}: bytes in, bytes out, time on a fake clock).

    from popgate.testing import POP3TestServer

    with POP3TestServer(users={"alice": "pw"},
                        mailboxes={"alice": [b"Subject: hi\\r\\n\\r\\nhello\\r\\n"]}) as server:
        client = poplib.POP3(server.host, server.port)
        ...
        server.faults.login_error = "IN-USE"

    from popgate.testing import MemoryPOP3Server

    session = MemoryPOP3Server(users={"alice": "pw"}).connect()
    assert session.send(b"USER alice\\r\\n") == b"+OK\\r\\n"

With pytest, the C{pop3_server} and C{pop3_memory_server} fixtures
(L{popgate.testing.pytest_plugin}) give one server per test, on a socket
or in memory.
"""

from popgate.testing.faults import LOGIN_ERRORS, Faults, InjectedFault
from popgate.testing.memory import MemoryPOP3Server, MemorySession
from popgate.testing.server import POP3TestServer
from popgate.testing.site import TEST_SETTINGS

__all__ = ["LOGIN_ERRORS", "TEST_SETTINGS", "Faults", "InjectedFault", "MemoryPOP3Server",
           "MemorySession", "POP3TestServer"]
