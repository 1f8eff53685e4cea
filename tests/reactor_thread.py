"""
The global reactor, run in a daemon thread, for integration tests that talk
to real servers over real sockets (pytest-twisted is not a dependency).

The reactor starts once per process, whichever test module asks first, and
stops when the process exits.  Tests call L{run} from the main thread; the
function runs in the reactor thread and its result (or exception) comes back.
"""

from __future__ import annotations

import atexit
import inspect
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import blockingCallFromThread

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def start_reactor() -> Any:
    """Start the global reactor in a daemon thread unless it already runs."""
    global _thread
    reactor = _reactor()
    with _lock:
        if _thread is None:
            running = threading.Event()
            reactor.callWhenRunning(running.set)
            _thread = threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="twisted-reactor",
                daemon=True,
            )
            _thread.start()
            if not running.wait(10):
                raise RuntimeError("the reactor did not start within 10 seconds")
            atexit.register(_stop)
    return reactor


def _stop() -> None:
    reactor = _reactor()
    if _thread is not None and _thread.is_alive():
        reactor.callFromThread(reactor.stop)
        _thread.join(5)


def run(fn: Callable[..., Any], *args: Any, timeout: float = 10, **kwargs: Any) -> Any:
    """
    Call C{fn(*args, **kwargs)} in the reactor thread and wait for its
    result.  C{fn} may return a plain value, a L{Deferred} or a coroutine;
    an exception or failure is raised here.  Gives up after C{timeout}
    seconds with L{twisted.internet.defer.TimeoutError}.
    """
    reactor = start_reactor()

    def call() -> Deferred[Any]:
        def start() -> Any:
            result = fn(*args, **kwargs)
            return Deferred.fromCoroutine(result) if inspect.iscoroutine(result) else result

        return maybeDeferred(start).addTimeout(timeout, reactor)

    return blockingCallFromThread(reactor, call)
