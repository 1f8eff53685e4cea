"""
A SQL user store: sqlite3, PostgreSQL (psycopg 3) or MySQL/MariaDB (PyMySQL)
queried for a password hash.

Queries are written once, with C{%(user)s}, C{%(localpart)s} and
C{%(domain)s} placeholders whatever the driver; they become bound
parameters in the driver's own style (L{popgate.cred.sql_query}), so a user
name is never pasted into SQL text.  Write C{%%} for a literal C{%}.

Failures are split as in the LDAP store: a wrong password, an unknown user,
a row with no usable password, several rows or a password in a scheme
popgate cannot check (logged as a configuration error) are all
L{UnauthorizedLogin}, so a client cannot tell them apart; a database that
is down, slow or rejects the query is L{TemporaryFailure}
(L{popgate.cred.sql_database}), so clients retry instead of telling users
their password is wrong.  Unknown users cost a password check too, against
a hash seen in the same database (L{popgate.cred.timing}), so timing does
not tell which users exist.

The user's name (and so their mailbox) is the database's spelling when the
query returns a column named C{user} (C{SELECT password, userid AS user},
as Dovecot's C{user} field): under MySQL's case-insensitive collations a
login as C{BOB} then is C{bob}, as a recipient C{Bob} is.  Without that
column the name is the one given.  The domain is lower-cased before the
query either way (L{popgate.cred.names}).
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any, NoReturn

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popgate.cred import schemes, scram
from popgate.cred.factories import global_reactor
from popgate.cred.sql_database import Database
from popgate.cred.sql_query import PLACEHOLDERS, POLICY_COLUMNS, Row, compile_query
from popgate.cred.sql_settings import (
    ARGS,
    DEFAULT_TIMEOUT,
    connect_args,
    driver_for,
    parse_args,
    redact,
)
from popgate.cred.text import StoredText, user_name
from popgate.cred.timing import TimingEqualiser
from popgate.cred.userinfo import AvatarId, UserInfo
from popgate.errors import TemporaryFailure, UnknownUser
from popgate.interfaces import (
    IPerUserPolicy,
    IReachable,
    IScramCredentials,
    IScramLookup,
    IUserLookup,
)
from popgate.policy import UserPolicy, user_policy

__all__ = ["DEFAULT_QUERY", "PLACEHOLDERS", "SQLChecker", "checked_name", "compile_query",
           "make_checker", "parse_args"]

DEFAULT_QUERY = "SELECT password, userid AS user FROM users WHERE userid = %(user)s"
MAX_USER_LENGTH = 320
#: Who a probe asks for: a name no user store holds.
_PROBE_USER = "popgate-probe@invalid"


@implementer(ICredentialsChecker, IUserLookup, IReachable, IPerUserPolicy, IScramLookup)
class SQLChecker:
    """
    Check passwords against a SQL table; look users up for delivery.

    The password query returns the stored password (C{{SCHEME}hash}, a bare
    crypt string, or a bare value in C{default_scheme}) in its first column
    and, optionally, the mail location in the second.  C{user_query} serves
    L{lookup_user} (default: the password query); its first row means "the
    user exists", its second column is the mail location.  In either, a
    column named C{user} is the user's stored name (not counted in the
    positions above); columns named C{login_delay} and C{expire} (likewise
    not counted) are the user's own LOGIN-DELAY and EXPIRE (NULL: the
    server's).

    APOP and CRAM-MD5 (L{IUsernameHashedPassword}) only succeed for
    C{{PLAIN}} / C{{CLEARTEXT}} passwords: they need the secret itself.  So
    the checker offers them (its C{credentialInterfaces}, which decide what
    the server announces) only with C{challenge}, by default only when
    C{default_scheme} is a clear-text one.  Likewise SCRAM logins need the
    user's SCRAM keys stored (C{{SCRAM-SHA-256}...}): the mechanisms in
    C{scram_mechanisms} are offered, by default the one C{default_scheme}
    names.

    @param dsn: C{sqlite:///path}, C{postgresql://user@host:port/db} or
        C{mysql://user:pw@host:port/db}.
    @param timeout: seconds for connecting and for one query; also the
        overall limit after which a login gets L{TemporaryFailure}.
    @param reactor: provides time and threads.
    @raise ValueError: with a one-line reason for a bad configuration.
    """

    credentialInterfaces: tuple[Any, ...] = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        dsn: str,
        query: str = DEFAULT_QUERY,
        user_query: str | None = None,
        *,
        reactor: Any,
        default_scheme: str | None = None,
        challenge: bool | None = None,
        scram_mechanisms: frozenset[str] | None = None,
        pool_min: int = 1,
        pool_max: int = 4,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        driver = driver_for(dsn)
        if not 1 <= pool_min <= pool_max:
            raise ARGS.error("need 1 <= pool_min <= pool_max")
        if not timeout > 0:
            raise ARGS.error("timeout= must be positive")
        if importlib.util.find_spec(driver.module) is None:
            raise ARGS.error(f"the {driver.module} module is missing ({driver.install})")
        if default_scheme is not None:
            try:
                schemes.verify_password(b"", "x", default_scheme=default_scheme)
            except schemes.UnknownScheme:
                raise ARGS.error(f"unknown scheme= {default_scheme[:40]!r}") from None
        self.dsn = dsn
        self.default_scheme = default_scheme
        if challenge is None:
            challenge = (default_scheme or "").upper() in schemes.PLAIN_NAMES
        if challenge:
            self.credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)
        if scram_mechanisms is None:
            default = (default_scheme or "").upper()
            scram_mechanisms = frozenset({default} & set(scram.MECHANISMS))
        unknown = set(scram_mechanisms) - set(scram.MECHANISMS)
        if unknown:
            raise ARGS.error(f"unknown SCRAM mechanism {sorted(unknown)[0][:40]!r}")
        self._scram = frozenset(scram_mechanisms)
        if self._scram:
            self.credentialInterfaces = (*self.credentialInterfaces, IScramCredentials)
        self.timeout = timeout
        self._kind = driver.kind
        self._reactor = reactor
        self._auth_query = compile_query(query, driver.paramstyle)
        self._user_query = compile_query(user_query or query, driver.paramstyle)
        # Read from the queries' text: CAPA asks before any query has run.
        self._policy_fields = frozenset(
            name for name in POLICY_COLUMNS
            if re.search(rf"\b{name}\b", f"{query} {user_query or ''}", re.IGNORECASE))
        self.database = Database(
            driver, dsn, connect_args(driver.kind, dsn, timeout), (pool_min, pool_max), timeout,
            reactor,
        )
        self._timing = TimingEqualiser(reactor, default_scheme)
        self._stored = StoredText(self.log, "sql")
        self._hinted_user_column = False

    # -- ICredentialsChecker ----------------------------------------------

    # popgate's avatar ids are str (the user name), not Twisted's bytes.
    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # type: ignore[override]
        name = self._user_name(credentials.username)
        if name is None:
            self.log.info("sql: refused a malformed user name")
            return self._refuse(credentials)
        d: defer.Deferred[Any] = self.database.fetch(self._auth_query, name)
        d.addCallback(self._check, credentials, name)
        return d

    # -- IUserLookup -------------------------------------------------------

    def lookup_user(self, name: str | bytes) -> defer.Deferred[UserInfo | None]:
        """The user and their mail location, or C{None} if there is none."""
        checked = self._user_name(name)
        if checked is None:
            return defer.succeed(None)

        def found(rows: list[Row]) -> UserInfo | None:
            if not rows:
                return None
            if len(rows) > 1:
                self.log.error("sql: configuration error: user_query returns several rows "
                               "for {user!r}", user=checked)
                raise TemporaryFailure("user_query returns several rows")
            name = self._canonical(rows[0], checked)
            return UserInfo(name, self._mail_location(rows[0], checked),
                            self._policy(rows[0], name))

        return self.database.fetch(self._user_query, checked).addCallback(found)

    # -- IReachable --------------------------------------------------------

    def probe(self) -> defer.Deferred[str]:
        """
        Run the password query, and C{user_query}, for a user nobody has,
        logging nothing: a wrong path, host, port, password, table or
        column fails here rather than at every login.
        """
        queries = [self._auth_query]
        if self._user_query.text != self._auth_query.text:
            queries.append(self._user_query)

        async def run() -> str:
            for query in queries:
                await self.database.fetch(query, _PROBE_USER, quiet=True)
            return f"{redact(self.dsn)}: the {'queries run' if len(queries) > 1 else 'query runs'}"

        return defer.Deferred.fromCoroutine(run())

    # -- IScramLookup ------------------------------------------------------

    def scram_mechanisms(self) -> frozenset[str]:
        return self._scram

    def lookup_scram(self, name: str | bytes, mechanism: str) -> defer.Deferred[Any]:
        """The user's keys for C{mechanism}, from the password query's row."""
        checked = self._user_name(name)
        if checked is None or mechanism not in self._scram:
            return defer.succeed(None)

        def found(rows: list[Row]) -> scram.ScramKeys | None:
            if len(rows) != 1 or not rows[0].columns:
                return None  # the login says why (unknown user, several rows)
            stored = self._stored.decode(rows[0].columns[0], "the password", checked)
            keys = scram.parse_keys(stored, self.default_scheme) if stored else None
            return keys if keys is not None and keys.mechanism == mechanism else None

        return self.database.fetch(self._auth_query, checked).addCallback(found)

    # -- IPerUserPolicy ----------------------------------------------------

    def policy_fields(self) -> frozenset[str]:
        """C{login_delay} and C{expire}, for each the queries name."""
        return self._policy_fields

    # -- checking ----------------------------------------------------------

    def _check(self, rows: list[Row], credentials: Any, name: str) -> Any:
        if not rows:
            # The login's line says so (reason=unknown-user).
            return self._refuse(credentials, UnknownUser)
        if len(rows) > 1:
            self.log.error("sql: configuration error: the query returns several rows "
                           "for {user!r}", user=name)
            return self._refuse(credentials)
        columns = rows[0].columns
        stored = self._stored.decode(columns[0], "the password", name) if columns else None
        if not stored:
            self.log.info("sql: user {user!r} has no password", user=name)
            return self._refuse(credentials)
        canonical = self._canonical(rows[0], name)
        name = AvatarId(canonical, self._mail_location(rows[0], name),
                        self._policy(rows[0], canonical))
        if IUsernamePassword.providedBy(credentials):
            return self._verify(credentials, stored, name)
        if IUsernameHashedPassword.providedBy(credentials):
            secret = schemes.plaintext_secret(stored, default_scheme=self.default_scheme)
            if secret is None:
                self.log.info("sql: APOP for {user!r} needs a {{PLAIN}} password", user=name)
                raise UnauthorizedLogin()
            if credentials.checkPassword(secret):
                return name
            self.log.info("sql: wrong APOP digest for {user!r}", user=name)
            raise UnauthorizedLogin()
        if IScramCredentials.providedBy(credentials):
            keys = scram.parse_keys(stored, self.default_scheme)
            if keys is None or keys.mechanism != credentials.mechanism:
                self.log.info("sql: {mechanism} for {user!r} needs {mechanism} keys stored",
                              mechanism=credentials.mechanism, user=name)
                raise UnauthorizedLogin()
            if credentials.check(keys):
                return name
            self.log.info("sql: wrong {mechanism} proof for {user!r}",
                          mechanism=credentials.mechanism, user=name)
            raise UnauthorizedLogin()
        raise UnauthorizedLogin()

    def _verify(self, credentials: Any, stored: str, name: str) -> defer.Deferred[str]:
        def verified(ok: bool) -> str:
            self._timing.learn(stored)  # the scheme is checkable: unknown users cost what this did
            if not ok:
                self.log.info("sql: wrong password for {user!r}", user=name)
                raise UnauthorizedLogin()
            return name

        def config_error(failure: Failure) -> NoReturn:
            failure.trap(schemes.UnknownScheme)
            self.log.error(
                "sql: configuration error: the password of {user!r} cannot be checked: {error}",
                user=name,
                error=failure.value,
            )
            raise UnauthorizedLogin()

        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        d = schemes.verify_in_thread(self._reactor, password, stored,
                                     default_scheme=self.default_scheme)
        return d.addCallbacks(verified, config_error)

    def _refuse(self, credentials: Any,
                error: type[UnauthorizedLogin] = UnauthorizedLogin) -> defer.Deferred[Any]:
        """Fail with C{error} after the time a real check takes."""
        if not IUsernamePassword.providedBy(credentials):
            return defer.fail(error())
        return self._timing.refuse(credentials.password, error)

    def _canonical(self, row: Row, name: str) -> str:
        """The name as the C{user} column spells it, else C{name}."""
        if not row.has_user:
            if self._kind == "mysql" and not self._hinted_user_column:
                self._hinted_user_column = True
                self.log.warn(
                    "sql: the query returns no `user` column, so users are named as they type: "
                    "under MySQL's case-insensitive collations `Bob` and `bob` would get two "
                    "mailboxes (add `userid AS user` to the query)"
                )
            return name
        stored = self._stored.decode(row.user, "the user column", name)
        canonical = self._user_name(stored) if stored else None
        if canonical is None:
            self.log.error("sql: configuration error: the user column holds no usable name "
                           "for {user!r}", user=name)
            return name
        return canonical

    def _policy(self, row: Row, name: str) -> UserPolicy | None:
        named = row.named
        return user_policy(named.get("login_delay"), named.get("expire"), name, self.log)

    def _mail_location(self, row: Row, name: str) -> str | None:
        if len(row.columns) < 2:
            return None
        return self._stored.decode(row.columns[1], "the mail location", name) or None

    @staticmethod
    def _user_name(raw: bytes | str) -> str | None:
        return checked_name(raw)


def checked_name(raw: bytes | str) -> str | None:
    """
    The user name as text, domain lower-cased, or C{None} if it cannot
    name a user (so no query is run for it).
    """
    name = user_name(raw)
    if (name is None or len(name) > MAX_USER_LENGTH or not name.isprintable()
            or name != name.strip()):
        # Control characters, NUL (PostgreSQL would reject it as a query
        # error, i.e. a temporary failure) and padding (MySQL ignores
        # trailing spaces when comparing) never name a user.
        return None
    return name


def make_checker(argstring: str) -> SQLChecker:
    """The C{sql:} strcred factory (see the dropin and L{parse_args})."""
    return SQLChecker(**parse_args(argstring), reactor=global_reactor())
