"""
A per-address login penalty that really slows password guessing.

Dovecot's auth penalty delays each auth request of a penalised address
before the lookup, but lets one address run lookups in parallel, so twenty
connections guess twenty times as fast.  Here each address (an IPv6 /64)
has one queue: once it has failed, its attempts are checked one at a time,
in order, and no check starts before the penalty has passed (doubling per
failure, capped).  The wait comes before the check, so a right password is
answered no sooner than a wrong one, and a client that gives up early and
reconnects does not get its turn any sooner.

An address with a clean record (no failure remembered) and user names that
logged in from the address are checked a few at a time (C{max_parallel}),
without waiting: a busy NAT or a fetcher polling many accounts is not
slowed to one check at a time, and a guesser gains at most C{max_parallel}
checks before its first failure puts it in line (each failure in that first
burst doubles the penalty, so the burst brings the cap closer).  The same
wrong user and password retried by a misconfigured client does not double
the penalty; trusted networks are neither delayed nor queued.

Pure bookkeeping on an injected clock: it schedules with C{callLater} on
that clock and never touches the global reactor.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import itertools
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.cred.error import LoginDenied, UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from popgate import errors
from popgate.addresses import Network, address_key, client_address
from popgate.cred.penalty_record import Attempt, Entry, remember
from popgate.events import emit

T = TypeVar("T")

# Failures that mean "wrong credentials" and so count against the address;
# anything else (a store that is down) says nothing about the password.
WRONG_CREDENTIALS = (UnauthorizedLogin, LoginDenied, UnhandledCredentials)

# Timers may fire a hair before the float they were computed from.
_EPSILON = 1e-6


class PenaltyQueueFull(errors.TemporaryFailure):
    """Too many login attempts from one address are already pending."""


class LoginPenalty:
    """
    Serialise and delay the login checks of each client address.

    C{attempt(ip, username, secret, check)} runs C{check()} once it is
    this address's turn (for a penalised address, one check at a time,
    first come first served) and its penalty has passed, and passes the
    result through.  After each failed check the penalty doubles from
    C{base_delay} up to C{max_delay}, and the next check of the address
    starts no earlier than C{failure time + penalty}.

    IPv6 clients are grouped by their C{/ipv6_prefix} network, IPv4-mapped
    IPv6 addresses count as the IPv4 address, and anything that is not an
    IP address (a UNIX socket) is used as given: the connection limits'
    rule, L{popgate.addresses.address_key}.

    @param clock: the reactor, or a L{twisted.internet.task.Clock} in tests.
    @param base_delay: seconds of penalty after the first failure.
    @param max_delay: the cap of the doubling.
    @param max_queue: attempts of one penalised address that may be
        pending at once (waiting, or being checked for a client still
        there); one more fails at once with L{PenaltyQueueFull}.  (Attempts
        that may run in parallel are not refused: they are bounded by the
        connections of the address, one login at a time each.)
    @param max_parallel: checks of one address that may run at once while
        it has a clean record, or for names it has forgiven.
    @param max_entries: addresses remembered; the least recently used idle
        one is forgotten first.
    @param expire_after: seconds without a failure after which an address's
        penalty is forgotten (and without any use, the address itself).
    @param ipv6_prefix: leading bits of an IPv6 address that identify one
        client.
    @param exempt_networks: CIDR strings of trusted networks (a webmail, a
        proxy) whose logins are neither delayed nor serialised.
    @param max_forgiven: user names remembered per address as having logged
        in from it.
    @param max_fingerprints: failed (user, secret) pairs remembered per
        address, so that retrying one does not grow the penalty.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        base_delay: float = 1.0,
        max_delay: float = 15.0,
        max_queue: int = 20,
        max_entries: int = 10000,
        expire_after: float = 3600.0,
        ipv6_prefix: int = 64,
        exempt_networks: tuple[str, ...] = (),
        max_forgiven: int = 64,
        max_fingerprints: int = 8,
        max_parallel: int = 4,
    ) -> None:
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must not be negative")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if expire_after <= 0:
            raise ValueError("expire_after must be positive")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be between 0 and 128")
        if max_forgiven < 0 or max_fingerprints < 0:
            raise ValueError("max_forgiven and max_fingerprints must not be negative")
        self._clock = clock
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_queue = max_queue
        self.max_parallel = max_parallel
        self.max_entries = max_entries
        self.expire_after = expire_after
        self.ipv6_prefix = ipv6_prefix
        self.exempt_networks: tuple[Network, ...] = tuple(
            _network(text) for text in exempt_networks
        )
        self.max_forgiven = max_forgiven
        self.max_fingerprints = max_fingerprints
        # Fingerprints must not be comparable across processes or restarts,
        # and never reveal a password: an HMAC under a key made here.
        self._hmac_key = secrets.token_bytes(32)
        # Least recently used first: eviction takes from the front.
        self._entries: OrderedDict[str, Entry] = OrderedDict()

    # -- public

    def attempt(
        self,
        ip: str,
        username: bytes,
        secret: bytes | None,
        check: Callable[[], Deferred[T]],
        release: Callable[[T], object] | None = None,
    ) -> Deferred[T]:
        """
        Run C{check()} when it is C{ip}'s turn and its penalty has passed.

        The returned Deferred fires with C{check()}'s result, success or
        failure.  A failure in L{WRONG_CREDENTIALS} counts against C{ip}
        (and revokes C{username}'s forgiveness); any other failure does not
        count; a success forgives C{username} from C{ip}.

        @param secret: the password as sent, only to recognise the same
            wrong pair retried (it is never stored); L{None} for
            credentials without a reusable secret (APOP, CRAM-MD5), whose
            failures always count.
        @param release: called with C{check()}'s successful result if the
            attempt was cancelled while its check ran, since nobody will
            receive it (log the avatar out there).
        @return: a Deferred that fails with L{PenaltyQueueFull} at once if
            C{max_queue} attempts of C{ip} are pending.  Cancelling it
            before the check started removes the attempt without running
            the check; cancelling it while the check runs fires it with
            L{CancelledError<twisted.internet.defer.CancelledError>} at
            once, but the check goes on (it is not cancelled), still holds
            C{ip}'s turn, and its outcome is still recorded.
        """
        address = client_address(ip)
        if address is not None and any(address in net for net in self.exempt_networks):
            # Neither queued nor recorded, but cancelled like the others.
            free = Attempt(username, None, check, release)
            free.result = Deferred(lambda _: setattr(free, "abandoned", True))
            maybeDeferred(check).addBoth(self._deliver, free)
            return free.result
        now = self._clock.seconds()
        entry = self._use(address_key(ip, self.ipv6_prefix), now)
        if not self._may_overlap(entry, username) and entry.pending() >= self.max_queue:
            return _failed(PenaltyQueueFull(
                f"{self.max_queue} login attempts from {entry.key} already pending"))
        item = Attempt(username, self._fingerprint(username, secret), check, release)
        item.result = Deferred(lambda _: self._cancel(entry, item))
        entry.queue.append(item)
        self._prune(now)
        self._pump(entry)
        return item.result

    def penalty(self, ip: str) -> float:
        """The current penalty of C{ip} in seconds (0 if none or exempt)."""
        entry = self._lookup(ip)
        return 0.0 if entry is None else entry.delay

    def queued(self, ip: str) -> int:
        """How many attempts of C{ip} wait for their check to start."""
        entry = self._lookup(ip)
        return 0 if entry is None else len(entry.queue)

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._entries)

    # -- the queue

    def _pump(self, entry: Entry) -> None:
        """Start whatever may start now, else wake up when it may."""
        if entry.pumping:
            # A check finished (or an attempt came) from inside this loop:
            # the outer call sees it on its next turn.
            return
        entry.pumping = True
        try:
            while entry.queue:
                now = self._clock.seconds()
                self._refresh(entry, now)
                item = self._next_ready(entry, now)
                if item is None:
                    break
                entry.queue.remove(item)
                self._run(entry, item)
            if entry.queue and not entry.running:
                # Only the penalty holds the queue: wake up when it is over.
                # (A running check pumps again when it finishes.)
                self._wake_at(entry, entry.not_before - self._clock.seconds())
            else:
                self._stop_timer(entry)
        finally:
            entry.pumping = False
        self._forget_if_unused(entry)

    def _may_overlap(self, entry: Entry, username: bytes) -> bool:
        """May this name's check run beside others, without waiting?"""
        return entry.last_failure is None or username in entry.forgiven

    def _next_ready(self, entry: Entry, now: float) -> Attempt | None:
        if len(entry.running) >= self.max_parallel:
            return None
        due = now >= entry.not_before - _EPSILON
        for item in entry.queue:
            if self._may_overlap(entry, item.username):
                return item
            if due:
                # The first one in line whose penalty is over runs alone,
                # and goes before anyone behind it: it cannot be starved.
                return None if entry.running else item
        return None

    def _run(self, entry: Entry, item: Attempt) -> None:
        entry.running.append(item)
        maybeDeferred(item.check).addBoth(self._finished, entry, item)

    def _finished(self, result: object, entry: Entry, item: Attempt) -> None:
        entry.running.remove(item)
        now = self._clock.seconds()
        if isinstance(result, Failure):
            if result.check(*WRONG_CREDENTIALS):
                self._record_failure(entry, item, now)
        else:
            self._record_success(entry, item, now)
        self._deliver(result, item)
        self._pump(entry)

    def _deliver(self, result: object, item: Attempt) -> None:
        """Hand the check's outcome to the caller, or release it if gone."""
        if not item.abandoned:
            if isinstance(result, Failure):
                item.result.errback(result)
            else:
                item.result.callback(result)
        elif item.release is not None and not isinstance(result, Failure):
            try:
                item.release(result)
            except Exception:  # the caller's code must not stall the queue
                self._log.failure("releasing an abandoned login failed")

    def _cancel(self, entry: Entry, item: Attempt) -> None:
        """The client went away: Deferred.cancel then fires CancelledError."""
        if item in entry.running:
            item.abandoned = True
            return
        entry.queue.remove(item)
        if not entry.queue:
            self._stop_timer(entry)
        self._forget_if_unused(entry)

    def _wake_at(self, entry: Entry, delay: float) -> None:
        delay = max(0.0, delay)
        when = self._clock.seconds() + delay
        if entry.timer is not None:
            if entry.timer.getTime() == when:
                return
            entry.timer.cancel()
        entry.timer = self._clock.callLater(delay, self._woken, entry)

    def _woken(self, entry: Entry) -> None:
        entry.timer = None
        self._pump(entry)

    def _stop_timer(self, entry: Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    # -- the record

    def _record_failure(self, entry: Entry, item: Attempt, now: float) -> None:
        self._refresh(entry, now)
        entry.forgiven.pop(item.username, None)
        repeated = False
        if item.fingerprint is not None:
            repeated = item.fingerprint in entry.failed
            remember(entry.failed, item.fingerprint, self.max_fingerprints)
        if entry.last_failure is None:
            entry.delay = min(self.base_delay, self.max_delay)
        elif not repeated:
            entry.delay = min(entry.delay * 2, self.max_delay)
        entry.last_failure = now
        entry.not_before = now + entry.delay
        self._touch(entry, now)
        emit(self._log, "auth.penalty", rip=entry.key, delay=entry.delay,
             repeated="yes" if repeated else "no")

    def _record_success(self, entry: Entry, item: Attempt, now: float) -> None:
        self._refresh(entry, now)
        remember(entry.forgiven, item.username, self.max_forgiven)
        self._touch(entry, now)

    def _fingerprint(self, username: bytes, secret: bytes | None) -> bytes | None:
        if secret is None:
            return None
        message = len(username).to_bytes(4, "big") + username + secret
        return hmac.digest(self._hmac_key, message, hashlib.sha256)

    # -- the table

    def _lookup(self, ip: str) -> Entry | None:
        address = client_address(ip)
        if address is not None and any(address in net for net in self.exempt_networks):
            return None
        entry = self._entries.get(address_key(ip, self.ipv6_prefix))
        if entry is not None:
            self._refresh(entry, self._clock.seconds())
        return entry

    def _use(self, key: str, now: float) -> Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = Entry(key)
        else:
            self._refresh(entry, now)
        self._touch(entry, now)
        return entry

    def _touch(self, entry: Entry, now: float) -> None:
        entry.last_used = now
        if self._entries.get(entry.key) is entry:
            self._entries.move_to_end(entry.key)

    def _refresh(self, entry: Entry, now: float) -> None:
        """Forget what has expired; survive a clock that jumped back."""
        if entry.last_failure is not None and now - entry.last_failure >= self.expire_after:
            entry.delay = 0.0
            entry.not_before = 0.0
            entry.last_failure = None
            entry.failed.clear()
        if now - entry.last_used >= self.expire_after:
            entry.forgiven.clear()
        entry.not_before = min(entry.not_before, now + entry.delay)

    def _forget_if_unused(self, entry: Entry) -> None:
        if (entry.idle() and entry.last_failure is None and not entry.forgiven
                and self._entries.get(entry.key) is entry):
            del self._entries[entry.key]

    def _prune(self, now: float) -> None:
        # Entries with attempts in progress are never dropped (their number
        # is bounded by the connections); the others go oldest first.
        stale = []
        for key, entry in self._entries.items():
            if now - entry.last_used < self.expire_after:
                break
            if entry.idle():
                stale.append(key)
        for key in stale:
            del self._entries[key]
        excess = len(self._entries) - self.max_entries
        if excess > 0:
            idle = (key for key, entry in self._entries.items() if entry.idle())
            for key in list(itertools.islice(idle, excess)):
                del self._entries[key]


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"exempt_networks: {text!r} is not an IP network") from None


def _failed(exception: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(exception))
    return d
