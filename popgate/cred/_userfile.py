"""
What the file-based checkers (htpasswd, passwd-file) share: a user file
re-read only when it changes, and a twisted.cred checker around it.

A subclass says how to parse one line and which scheme a bare hash is in;
the rest (reloading, threads, timing, errors) lives here once.

Case: the local part is matched exactly, as the file spells it (the files
are case-sensitive, like Apache's and Dovecot's reading of them, and
RFC 5321 2.4 lets only the local host decide); the domain is not
(L{popgate.cred.names}), so C{bob@Example.org} in the file and a login as
C{bob@example.org} are the same user, named C{bob@example.org}.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, TypeVar

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from popgate.cred import scram
from popgate.cred.names import normalize_user
from popgate.cred.schemes import UnknownScheme, verify_in_thread
from popgate.cred.text import NotText, stored_text, user_name
from popgate.cred.timing import TimingEqualiser
from popgate.cred.userinfo import AvatarId, UserInfo
from popgate.errors import PermanentFailure, TemporaryFailure, UnknownUser
from popgate.interfaces import IReachable, IScramCredentials, IScramLookup, IUserLookup
from popgate.plural import plural
from popgate.policy import UserPolicy
from popgate.stores import nowait

_Key = tuple[int, int, int, int]


@dataclass(frozen=True)
class UserEntry:
    """One user of a user file: the name (domain lower-cased), the stored
    hash, and the user's own LOGIN-DELAY/EXPIRE if the file gives them."""

    name: str
    stored: str
    policy: UserPolicy | None = None


@dataclass(frozen=True)
class _Reading:
    """The file as read in the thread pool: its identity, users and complaints."""

    key: _Key
    users: dict[str, UserEntry]
    # (line, None): malformed; (line, name): the name listed again
    warnings: tuple[tuple[int, str | None], ...]


class UserFile:
    """
    A user file, parsed again only when its device, inode, size or mtime
    changes, so edits (including an atomic rename) take effect at the next
    login without a restart.

    The C{stat} runs on the reactor thread when the kernel's caches can
    answer it without waiting for the disk (L{popgate.stores.nowait}),
    else (and, after a change, the read and the parse) in the reactor's
    thread pool, so a slow disk never stalls the reactor; logging and the
    switch to the new users happen back on the reactor thread.
    """

    log = Logger()

    def __init__(
        self, path: str, parse_line: Callable[[str], UserEntry | None], reactor: IReactorThreads
    ) -> None:
        self.path = path
        self._parse_line = parse_line
        self._reactor = reactor
        self._key: _Key | None = None
        self._users: dict[str, UserEntry] = {}
        self._failing = False

    def users(self) -> Deferred[dict[str, UserEntry]]:
        """
        The users by name (domain lower-cased), from the file as it is now.

        @return: a L{Deferred} failing with L{TemporaryFailure} when the
            file is missing or unreadable.
        """
        if self._key is not None and self._cached_key() == self._key:
            # Unchanged, as the kernel's caches tell without waiting for
            # the disk: no trip to a thread and back (which costs more
            # than the rest of a cheap login's check).
            return succeed(self._use(None))
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                              self._read_if_changed, self._key)
        return d.addCallbacks(self._use, self._unreadable)

    def probe(self) -> Deferred[str]:
        """
        Read the file now, in the thread pool, logging nothing: fires with
        C{"N users"} (and the count of malformed lines), fails with
        L{TemporaryFailure} naming the file and the error.
        """
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                              self._read_if_changed, None)

        def read(reading: _Reading) -> str:
            malformed = sum(1 for _, name in reading.warnings if name is None)
            found = plural(len(reading.users), "user")
            return f"{found}, {plural(malformed, 'malformed line')} ignored" if malformed else found

        def unreadable(failure: Failure) -> NoReturn:
            failure.trap(OSError)
            error = failure.value.strerror  # type: ignore[union-attr]
            raise TemporaryFailure(f"cannot read user file {self.path}: {error}")

        return d.addCallbacks(read, unreadable)

    def _cached_key(self) -> _Key | None:
        """The file's identity from the dentry and inode caches, on the
        reactor thread; C{None} when that would wait for the disk, or
        fails (the thread then finds out why)."""
        try:
            st = nowait.stat_cached(self.path)
        except OSError:
            return None
        return None if st is None else self._stat_key(st)

    # -- in the thread pool --

    @staticmethod
    def _stat_key(st: os.stat_result) -> _Key:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_if_changed(self, known: _Key | None) -> _Reading | None:
        if self._stat_key(os.stat(self.path)) == known:
            return None
        with open(self.path, "rb") as f:
            key = self._stat_key(os.fstat(f.fileno()))
            data = f.read()
        users, warnings = self._parse(data)
        return _Reading(key, users, tuple(warnings))

    def _parse(self, data: bytes) -> tuple[dict[str, UserEntry], list[tuple[int, str | None]]]:
        users: dict[str, UserEntry] = {}
        warnings: list[tuple[int, str | None]] = []
        for number, raw in enumerate(data.splitlines(), 1):
            raw = raw.strip()
            if not raw or raw.startswith(b"#"):
                continue
            try:
                entry = self._parse_line(stored_text(raw) or "")
            except NotText:
                entry = None
            if entry is None:
                warnings.append((number, None))
                continue
            entry = UserEntry(normalize_user(entry.name), entry.stored, entry.policy)
            if entry.name in users:
                warnings.append((number, entry.name))
            else:
                users[entry.name] = entry
        return users, warnings

    # -- back on the reactor thread --

    def _use(self, reading: _Reading | None) -> dict[str, UserEntry]:
        self._failing = False
        # Two logins may both have read the same change: report it once.
        if reading is None or reading.key == self._key:
            return self._users
        # The line holds a hash: log where it is, never what it says.
        for number, name in reading.warnings:
            if name is None:
                self.log.warn("{path}:{line}: malformed line ignored", path=self.path, line=number)
            else:
                self.log.warn(
                    "{path}:{line}: user {user} listed again; the first entry wins",
                    path=self.path,
                    line=number,
                    user=name,
                )
        self._key, self._users = reading.key, reading.users
        self.log.info("{path}: {users}", path=self.path, users=plural(len(self._users), "user"))
        return self._users

    def _unreadable(self, failure: Failure) -> NoReturn:
        failure.trap(OSError)
        error = failure.value.strerror  # type: ignore[union-attr]
        if not self._failing:  # once per outage, not once per login
            self.log.error("cannot read user file {path}: {error}", path=self.path, error=error)
        self._failing = True
        raise TemporaryFailure(f"cannot read user file {self.path}: {error}") from failure.value


_C = TypeVar("_C", bound="UserFileChecker")


@implementer(ICredentialsChecker, IUserLookup, IReachable, IScramLookup)
class UserFileChecker:
    """
    A checker reading users from a file.  Unknown users and wrong passwords
    both give L{UnauthorizedLogin}, after the same amount of hashing; the
    avatar id is the user name as written in the file, domain lower-cased.

    Entries holding SCRAM keys (C{{SCRAM-SHA-256}...}) also serve SCRAM
    logins (L{IScramCredentials}); a mechanism is offered only while some
    entry of the file has keys for it, so clients that pick SCRAM whenever
    it is offered (mpop) keep working against a file of bcrypt hashes.
    """

    credentialInterfaces: ClassVar[tuple[type[Interface], ...]] = (IUsernamePassword,)
    #: The name used in messages and in the strcred argument, e.g. "htpasswd".
    kind: ClassVar[str] = "user-file"
    #: The scheme of a hash with neither a {SCHEME} prefix nor a $id$.
    default_scheme: ClassVar[str | None] = "CRYPT"

    log = Logger()

    def __init__(self, path: str, reactor: IReactorThreads) -> None:
        self._reactor = reactor
        self._file = UserFile(path, self.parse_line, reactor)
        self._timing = TimingEqualiser(reactor, self.default_scheme)
        self._sampled: dict[str, UserEntry] | None = None
        # Until the file is read for a login, a glance at it (at start-up,
        # or in a reload) says which SCRAM mechanisms to offer.
        try:
            with open(path, "rb") as f:
                data = f.read().upper()
        except OSError:
            data = b""
        self._scram = frozenset(m for m in scram.MECHANISMS if b"{%s}" % m.encode() in data)

    @property
    def path(self) -> str:
        return self._file.path

    @staticmethod
    def parse_line(line: str) -> UserEntry | None:
        """One non-blank, non-comment line, or C{None} when it is malformed."""
        raise NotImplementedError

    @classmethod
    def from_argstring(cls: type[_C], argstring: str, reactor: IReactorThreads) -> _C:
        """
        The checker for a strcred argument (the file's path).

        @raise ValueError: with a one-line reason.
        """
        path = argstring.strip()
        if not path:
            raise ValueError(f"{cls.kind}: give the file's path: {cls.kind}:/etc/popgate/users")
        if not os.path.isfile(path):
            raise ValueError(f"{cls.kind}: no such file: {path}")
        return cls(path, reactor)

    # ICredentialsChecker

    # popgate's avatar ids are str (the user name), not Twisted's bytes.
    def requestAvatarId(self, credentials: ICredentials) -> Deferred[str]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._authenticate(credentials))

    async def _authenticate(self, credentials: Any) -> str:
        name = user_name(credentials.username)
        if name is None:
            raise UnauthorizedLogin()
        users = await self._users()
        entry = users.get(name)
        if IUsernamePassword.providedBy(credentials):
            return await self._check_password(entry, credentials.password)
        return await self._check_other(entry, credentials)

    async def _users(self) -> dict[str, UserEntry]:
        users = await self._file.users()
        if users is not self._sampled:  # re-read: unknown users cost what these do
            self._sampled = users
            self._timing.learn_sample(entry.stored for entry in users.values())
            self._scram = frozenset(filter(None, (scram.mechanism_of(e.stored, self.default_scheme)
                                                  for e in users.values())))
        return users

    async def _check_password(self, entry: UserEntry | None, password: bytes | str) -> str:
        if entry is None:
            return await self._timing.refuse(password, UnknownUser)  # type: ignore[no-any-return]
        if isinstance(password, str):
            password = password.encode("utf-8")
        try:
            ok = await verify_in_thread(self._reactor, password, entry.stored,
                                        default_scheme=self.default_scheme)
        except UnknownScheme as e:
            self.log.error(
                "{path}: configuration error for user {user}: {reason}",
                path=self.path,
                user=entry.name,
                reason=str(e),
            )
            raise PermanentFailure(f"{self.path}: user {entry.name}: {e}") from e
        if not ok:
            raise UnauthorizedLogin()
        return self.avatar_id(entry)

    @staticmethod
    def avatar_id(entry: UserEntry) -> str:
        """What a login as C{entry} gives: the name, with the user's policy."""
        return AvatarId(entry.name, None, entry.policy) if entry.policy else entry.name

    async def _check_other(self, entry: UserEntry | None, credentials: Any) -> str:
        """Credentials other than a username and password: a SCRAM proof."""
        if not IScramCredentials.providedBy(credentials):
            raise UnauthorizedLogin()
        if entry is None:
            raise UnknownUser()
        keys = scram.parse_keys(entry.stored, self.default_scheme)
        if keys is None or not credentials.check(keys):
            raise UnauthorizedLogin()
        return self.avatar_id(entry)

    # IScramLookup

    def scram_mechanisms(self) -> frozenset[str]:
        return self._scram

    def lookup_scram(self, name: str | bytes, mechanism: str) -> Deferred[scram.ScramKeys | None]:
        return Deferred.fromCoroutine(self._lookup_scram(name, mechanism))

    async def _lookup_scram(self, name: str | bytes, mechanism: str) -> scram.ScramKeys | None:
        users = await self._users()
        text = user_name(name)
        entry = users.get(text) if text is not None else None
        keys = scram.parse_keys(entry.stored, self.default_scheme) if entry is not None else None
        return keys if keys is not None and keys.mechanism == mechanism else None

    # IReachable

    def probe(self) -> Deferred[str]:
        return self._file.probe()

    # IUserLookup

    def lookup_user(self, name: str | bytes) -> Deferred[UserInfo | None]:
        return Deferred.fromCoroutine(self._lookup(name))

    async def _lookup(self, name: str | bytes) -> UserInfo | None:
        users = await self._users()
        text = user_name(name)
        entry = users.get(text) if text is not None else None
        return UserInfo(entry.name, policy=entry.policy) if entry is not None else None
