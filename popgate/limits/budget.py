"""
The descriptor budget of a login process: how many connections its
C{RLIMIT_NOFILE} allows (L{derived_limit}), and raising the soft limit to
the hard one at start-up (L{raise_nofile_limit}).
"""

from __future__ import annotations

import resource
from collections.abc import Callable

#: Descriptors the process needs besides its sessions: standard streams,
#: log files, the epoll and waker descriptors, listening sockets, Twisted's
#: spare EMFILE descriptor, files the thread pool is reading, DB and LDAP
#: connections.
PROCESS_RESERVE = 64
#: Sockets accepted in one reactor turn only to be refused (each lives
#: until its refusal is written, at the next turn), and POP3S refusals
#: waiting for their TLS handshake (at most half of it).
ACCEPT_RESERVE = 128
#: What one session may hold at its peak: its socket, the maildrop lock,
#: and the message being sent.
FDS_PER_SESSION = 3
#: Raising the soft limit stops here, well above what one process serves.
NOFILE_CAP = 65536


def derived_limit(nofile: int) -> tuple[int, int]:
    """
    (global connection limit, reserve) for a process allowed C{nofile}
    descriptors: the reserve (L{PROCESS_RESERVE} + L{ACCEPT_RESERVE}, at
    most a quarter of C{nofile}) stays free, and every session may hold
    L{FDS_PER_SESSION} descriptors, so neither C{accept()} nor a store's
    C{open()} runs out.
    """
    reserve = min(PROCESS_RESERVE + ACCEPT_RESERVE, nofile // 4)
    return max(1, (nofile - reserve) // FDS_PER_SESSION), reserve


def raise_nofile_limit(getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
                       setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
                       cap: int = NOFILE_CAP) -> tuple[int, int]:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit (at most C{cap}):
    systemd and most shells start services with a soft limit of 1024.
    Needs no privilege.  Returns (soft limit before, soft limit now).
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    wanted = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, wanted
    return soft, soft
