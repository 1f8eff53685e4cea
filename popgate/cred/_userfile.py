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
from typing import Any, ClassVar, TypeVar

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from zope.interface import Interface, implementer

from popgate.cred.names import normalize_user
from popgate.cred.schemes import (
    DUMMY_HASH,
    UnknownScheme,
    dummy_verify_in_thread,
    plaintext_secret,
    verify_in_thread,
)
from popgate.cred.userinfo import UserInfo
from popgate.errors import PermanentFailure, TemporaryFailure
from popgate.interfaces import IUserLookup


@dataclass(frozen=True)
class UserEntry:
    """One user of a user file: the name (domain lower-cased) and the stored hash."""

    name: str
    stored: str


class UserFile:
    """
    A user file, parsed again only when its device, inode, size or mtime
    changes, so a C{stat} is all a login costs and edits (including an
    atomic rename) take effect without a restart.
    """

    log = Logger()

    def __init__(self, path: str, parse_line: Callable[[str], UserEntry | None]) -> None:
        self.path = path
        self._parse_line = parse_line
        self._key: tuple[int, int, int, int] | None = None
        self._users: dict[str, UserEntry] = {}
        self._failing = False

    @staticmethod
    def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def users(self) -> dict[str, UserEntry]:
        """
        The users by name (domain lower-cased), from the file as it is now.

        @raise TemporaryFailure: the file is missing or unreadable.
        """
        try:
            if self._stat_key(os.stat(self.path)) != self._key:
                with open(self.path, "rb") as f:
                    key = self._stat_key(os.fstat(f.fileno()))
                    data = f.read()
                self._users = self._parse(data)
                self._key = key
                self.log.info("{path}: {count} users", path=self.path, count=len(self._users))
        except OSError as e:
            if not self._failing:  # once per outage, not once per login
                self.log.error(
                    "cannot read user file {path}: {error}", path=self.path, error=e.strerror
                )
            self._failing = True
            raise TemporaryFailure(f"cannot read user file {self.path}: {e.strerror}") from e
        self._failing = False
        return self._users

    def _parse(self, data: bytes) -> dict[str, UserEntry]:
        users: dict[str, UserEntry] = {}
        for number, raw in enumerate(data.splitlines(), 1):
            raw = raw.strip()
            if not raw or raw.startswith(b"#"):
                continue
            try:
                entry = self._parse_line(raw.decode("utf-8"))
            except UnicodeDecodeError:
                entry = None
            if entry is not None:
                entry = UserEntry(normalize_user(entry.name), entry.stored)
            # The line holds a hash: log where it is, never what it says.
            if entry is None:
                self.log.warn("{path}:{line}: malformed line ignored", path=self.path, line=number)
            elif entry.name in users:
                self.log.warn(
                    "{path}:{line}: user {user} listed again; the first entry wins",
                    path=self.path,
                    line=number,
                    user=entry.name,
                )
            else:
                users[entry.name] = entry
        return users


def _text(value: bytes | str) -> str | None:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


_C = TypeVar("_C", bound="UserFileChecker")


@implementer(ICredentialsChecker, IUserLookup)
class UserFileChecker:
    """
    A checker reading users from a file.  Unknown users and wrong passwords
    both give L{UnauthorizedLogin}, after the same amount of hashing; the
    avatar id is the user name as written in the file, domain lower-cased.
    """

    credentialInterfaces: ClassVar[tuple[type[Interface], ...]] = (IUsernamePassword,)
    #: The name used in messages and in the strcred argument, e.g. "htpasswd".
    kind: ClassVar[str] = "user-file"
    #: The scheme of a hash with neither a {SCHEME} prefix nor a $id$.
    default_scheme: ClassVar[str | None] = "CRYPT"

    log = Logger()

    def __init__(self, path: str, reactor: IReactorThreads | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor  # type: ignore[assignment]
        self._reactor: IReactorThreads = reactor  # type: ignore[assignment]
        self._file = UserFile(path, self.parse_line)
        self._sample_of: dict[str, UserEntry] | None = None
        self._sample = DUMMY_HASH

    @property
    def path(self) -> str:
        return self._file.path

    @staticmethod
    def parse_line(line: str) -> UserEntry | None:
        """One non-blank, non-comment line, or C{None} when it is malformed."""
        raise NotImplementedError

    @classmethod
    def from_argstring(cls: type[_C], argstring: str) -> _C:
        """
        The checker for a strcred argument (the file's path).

        @raise ValueError: with a one-line reason.
        """
        path = argstring.strip()
        if not path:
            raise ValueError(f"{cls.kind}: give the file's path: {cls.kind}:/etc/popgate/users")
        if not os.path.isfile(path):
            raise ValueError(f"{cls.kind}: no such file: {path}")
        return cls(path)

    # ICredentialsChecker

    # popgate's avatar ids are str (the user name), not Twisted's bytes.
    def requestAvatarId(self, credentials: ICredentials) -> Deferred[str]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._authenticate(credentials))

    async def _authenticate(self, credentials: Any) -> str:
        name = _text(credentials.username)
        if name is None:
            raise UnauthorizedLogin()
        users = self._file.users()
        entry = users.get(normalize_user(name))
        if IUsernamePassword.providedBy(credentials):
            password = credentials.password
            if isinstance(password, str):
                password = password.encode("utf-8")
            return await self._check_password(entry, password, users)
        return await self._check_other(entry, credentials)

    async def _check_password(
        self, entry: UserEntry | None, password: bytes, users: dict[str, UserEntry]
    ) -> str:
        if entry is None:
            sample = self._sample_hash(users)
            await dummy_verify_in_thread(
                self._reactor, password, sample, default_scheme=self.default_scheme
            )
            raise UnauthorizedLogin()
        try:
            ok = await verify_in_thread(
                self._reactor, password, entry.stored, default_scheme=self.default_scheme
            )
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
        return entry.name

    def _sample_hash(self, users: dict[str, UserEntry]) -> str:
        """
        A hash from this file (not a clear-text one), checked for unknown
        users so that they cost what a known one does.
        """
        if users is not self._sample_of:
            self._sample_of = users
            self._sample = next(
                (
                    entry.stored
                    for entry in users.values()
                    if entry.stored
                    and plaintext_secret(entry.stored, default_scheme=self.default_scheme) is None
                ),
                DUMMY_HASH,
            )
        return self._sample

    async def _check_other(self, entry: UserEntry | None, credentials: Any) -> str:
        """Credentials other than a username and password: none by default."""
        raise UnauthorizedLogin()

    # IUserLookup

    def lookup_user(self, name: str | bytes) -> Deferred[UserInfo | None]:
        text = _text(name)
        try:
            users = self._file.users()
        except TemporaryFailure:
            return fail()
        entry = users.get(normalize_user(text)) if text is not None else None
        return succeed(UserInfo(entry.name) if entry is not None else None)
