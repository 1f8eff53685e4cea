"""
The global reactor in a daemon thread, for integration tests that talk to
real servers over real sockets (pytest-twisted is not a dependency).

This is L{popgate.testing.reactor_thread}, the one reactor thread of the
process: popgate's own tests and L{popgate.testing.POP3TestServer} share it,
so they never try to start the reactor twice.
"""

from popgate.testing.reactor_thread import run, start_reactor

__all__ = ["run", "start_reactor"]
