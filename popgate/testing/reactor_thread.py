"""
The global Twisted reactor, run in a daemon thread, so blocking test code
(pytest, unittest) can use servers that live in the reactor.

The global reactor can run only once per process, so there is one reactor
thread for everybody: whoever asks first starts it, everyone else gets the
same one, and it stops when the process exits.  A reactor that something
else already runs in another thread (crochet, say) is used as it is.
"""

from __future__ import annotations

import atexit
import inspect
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import blockingCallFromThread
from twisted.python import threadable

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def start_reactor() -> Any:
    """
    Start the global reactor in a daemon thread unless it already runs;
    return it.

    @raise RuntimeError: when called from the reactor's own thread (under
        trial or pytest-twisted), where blocking on it would deadlock.
    """
    global _thread
    reactor = _reactor()
    with _lock:
        if reactor.running:
            if threadable.isInIOThread():
                raise RuntimeError("the reactor runs in this very thread (trial, pytest-twisted?): "
                                   "blocking on it here would deadlock")
            return reactor
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
            # Its pool's threads are made by whichever thread first hands it
            # work, and inherit that thread's daemon flag: made by a test's
            # own thread they would be non-daemon, and the interpreter waits
            # for those before it runs atexit (so _stop would never come).
            reactor.getThreadPool().threadFactory = _daemon_thread
            atexit.register(_stop)
    return reactor


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


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
