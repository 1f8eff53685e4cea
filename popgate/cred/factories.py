"""
Where the user stores meet the global reactor: nowhere else.

twistd parses C{--auth} (calling each strcred factory, C{make_checker(argstring)})
while it reads its options, before any composition root exists, and the
strcred interface has no way to pass a reactor.  So the factories, and only
they, take the global reactor from here, once per checker; every class below
them is given its reactor and never looks it up.
"""

from __future__ import annotations

from typing import Any

__all__ = ["global_reactor"]


def global_reactor() -> Any:
    """The global reactor, for a strcred factory."""
    # Imported on call, not at import time: importing popgate must never
    # install a reactor (twistd installs the one --reactor names first).
    from twisted.internet import reactor

    return reactor
