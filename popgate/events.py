"""
The operational events popgate logs: every one declared here, once, with
its fields, level and text.  Log files, fail2ban and the Prometheus
metrics observer all read these events; nothing else in popgate is part
of that contract.

An event is a C{twisted.logger} event emitted with L{emit}: its
C{log_format} gives the text line, and each field is also a key of the
event, so an observer counts without parsing text (C{event["event"]} is
the name).  Never a password, a SASL response or an APOP digest.

Text lines are built to be parsed: a fixed prefix (C{pop3-login: Login
failed:}), then C{key=value} pairs separated by C{", "}, always the same
keys in the same order for one event and result.  Values are tokens
(C{[A-Za-z0-9._:/-]}), numbers, or free text in angle brackets
(C{user=<bob>}); in free text, control characters, C{\\}, C{<}, C{>},
C{(} and C{)} are written C{\\xNN} and more than 256 characters are cut
(C{...}), so what a client sends can never end the brackets and forge a
key.  Addresses (C{rip}, C{lip}) are the client's real address (behind
C{haproxy:} listeners, the one in the PROXY header), IPv4-mapped IPv6
written as IPv4.  Durations are seconds, to the millisecond.

C{--log-format json} writes one JSON object per line with these keys,
always, in this order, then the event's fields::

    time       "2025-03-10T12:00:00.123456Z" (RFC 3339, UTC)
    level      "debug", "info", "warn", "error" or "critical"
    event      the name below, or "log" for any other line (start-up,
               Twisted's own lines, unexpected errors)
    text       the line as the text format shows it, without the time
    namespace  the logger's namespace (the Python module and class)

and, in the lines of a C{--workers} process, C{worker} (its number, 1
to N-1), and for an unexpected error, C{traceback} (the Python
traceback).  Field
types in JSON: C{int} and C{float} are numbers, everything else a string.

The events (L{CATALOGUE}; C{python -m popgate.events} prints this table
with every field):

- C{pop3.connect} (debug): a POP3 connection was accepted.
- C{pop3.login} (info; warn for C{result=error}): one login attempt,
  C{result} C{ok}, C{failed} (the client's fault: fail2ban counts these)
  or C{error} (the server's: a store down, the maildrop in use).
- C{pop3.disconnect} (info; debug when the client only connected and
  left): a session ended before any login succeeded.
- C{pop3.logout} (info): a logged-in session ended, with what it did.
- C{lmtp.delivery} (info; warn unless C{ok}, info for an unknown user or
  a message too big): one recipient's delivery over LMTP.
- C{deliver.delivery} (info): one delivery by C{popgate deliver} (which
  says a failure on standard error too, for the MTA).
- C{auth.penalty} (info): a failed login from an address made its next
  logins wait.
- C{limit.refused} (debug): a connection refused by a connection limit
  (a rate-limited warning says so in words).
- C{proxy.refused} (warn): a connection to a C{haproxy:} listener closed
  before any session: not from a trusted proxy (C{--proxy-trusted}), or
  no valid PROXY header in time.
- C{tls.handshake} (debug): a TLS handshake (POP3S or STLS) succeeded,
  as known at the first command over TLS.
- C{tls.handshake_failed} (info): a TLS handshake (POP3S or STLS) failed.
- C{store.error} / C{userstore.error} (warn; debug when a C{pop3.login}
  or delivery line says the same): a mail store or user store failed.
- C{config.reload} (info; warn when a change needs a restart, error for
  C{result=failed}): a reload (SIGHUP, C{systemctl reload}) applied the
  configuration, or kept the old one and says why.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger, LogLevel

from popgate.addresses import client_address

__all__ = ["CATALOGUE", "EventType", "Field", "address_text", "emit", "free_text"]

#: Keys every JSON line has; no event field may take these names.
JSON_KEYS = ("time", "level", "event", "text", "namespace")
#: Keys some JSON lines have (L{popgate.logs.json_line}); reserved too.
OPTIONAL_JSON_KEYS = ("worker", "traceback")
#: Free text longer than this is cut.
MAX_TEXT = 256

_UNSAFE = re.compile(r"[\\<>()]")


def free_text(value: Any, limit: int = MAX_TEXT) -> str:
    """
    C{value} made safe for angle brackets in a log line: bytes decoded as
    UTF-8 (bad bytes as U+FFFD), non-printable characters and C{\\ < > ( )}
    as C{\\xNN} (C{\\uNNNN} above U+00FF), cut after C{limit} characters.
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable() or _UNSAFE.search(text):
        text = "".join(_escape(c) for c in text)
    return text + "..." if cut else text


def _escape(char: str) -> str:
    if char.isprintable() and char not in "\\<>()":
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def address_text(address: Any) -> str:
    """
    The host of a Twisted address as the C{rip}/C{lip} fields give it: an
    IP address (IPv4-mapped IPv6 as IPv4, so a ban hits the right table),
    C{unix} for a UNIX socket, C{-} when there is none.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return "unix" if address is not None and hasattr(address, "name") else "-"
    return _host_text(host)


@functools.lru_cache(maxsize=4096)
def _host_text(host: str) -> str:
    """Cached: every connection's two addresses, and parsing one costs
    more than the lookup."""
    parsed = client_address(host)
    return free_text(host, 64) if parsed is None else str(parsed)


@dataclass(frozen=True)
class Field:
    """
    One field of an event.

    @ivar type: C{int}, C{float} (seconds, rounded to milliseconds),
        C{token} (one of C{values} when given, else a word), C{text} (free
        text, see L{free_text}) or C{address} (see L{address_text}).
    """

    name: str
    type: str
    meaning: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class EventType:
    """
    One kind of event: its fields (every one always present), its level,
    and its text: C{formats[result]} when the event has a C{result} field
    and a format for that result, else C{formats[""]}.  C{levels} gives
    the level of a result, when it is not C{level}.
    """

    name: str
    level: LogLevel
    about: str
    fields: tuple[Field, ...]
    formats: Mapping[str, str]
    levels: Mapping[str, LogLevel] = field(default_factory=dict)

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """The fields' names (an event must be given exactly these)."""
        return frozenset(f.name for f in self.fields)

    def format_for(self, fields: Mapping[str, Any]) -> str:
        result = fields.get("result")
        if isinstance(result, str) and result in self.formats:
            return self.formats[result]
        return self.formats[""]

    def level_for(self, fields: Mapping[str, Any]) -> LogLevel:
        result = fields.get("result")
        if isinstance(result, str) and result in self.levels:
            return self.levels[result]
        return self.level


# -- the fields events share

def _f(name: str, type: str, meaning: str, *values: str) -> Field:
    return Field(name, type, meaning, tuple(values))


_RIP = _f("rip", "address", "the client's address (behind haproxy: the one in the PROXY header)")
_LIP = _f("lip", "address", "the local address the client connected to")
_TLS = _f("tls", "token", "whether the connection is TLS now (POP3S, or after STLS)", "yes", "no")
_SESSION = _f("session", "token", "an id for the connection, the same in each of its lines")
_DURATION = _f("duration", "float", "seconds the attempt or session took")
_WHY = _f("why", "text", "the server-side error, in words (empty when none)")
_LOGIN_USER = _f("user", "text", "the user name as the client sent it (empty when none)")
_METHOD = _f("method", "token", "USER (USER/PASS), APOP, or the SASL mechanism (PLAIN, LOGIN, "
             "CRAM-MD5, SCRAM-SHA-256, SCRAM-SHA-1, OAUTHBEARER, XOAUTH2); empty when the "
             "session never tried")
_ATTEMPTS = _f("attempts", "int", "failed logins in this session so far, this one included")

#: Why a login failed (result=failed) or could not be served (result=error).
LOGIN_REASONS = (
    "",                      # result=ok
    "bad-password",          # the user store refused the credentials
    "unknown-user",          # the user store knows no such user
    "bad-sasl",              # a SASL exchange that breaks its mechanism's rules
    "bad-token",             # an OAuth bearer token refused (OAUTHBEARER, XOAUTH2)
    "aborted",               # the client cancelled (AUTH *) or left during the check
    "plaintext-disallowed",  # a password in clear on a connection that is not secure
    "penalty",               # too many logins from the address wait already
    "login-delay",           # sooner than the user's LOGIN-DELAY after the last login
    "in-use",                # the maildrop is open in another session
    "userstore",             # a user store failed (down, misconfigured)
    "store",                 # the mail store failed to open the maildrop
    "internal",              # an unexpected error (its traceback is logged too)
)
#: Why a session ended before login (pop3.disconnect) or after (pop3.logout).
END_REASONS = (
    "quit",                   # QUIT
    "disconnect",             # the client closed or the connection was lost
    "idle-timeout",           # no command within --idle-timeout
    "login-timeout",          # no login within --login-timeout
    "too-many-failures",      # --max-auth-failures failed logins
    "too-many-bad-commands",  # bad commands in a row
    "line-too-long",          # an overlong command line
    "aborted",                # left while its login waited for the penalty
    "update-failed",          # QUIT, but the deletions could not be applied
    "error",                  # a message could not be read or sent (see store.error)
    "penalty",                # too many logins from the address were waiting
    "tls-failed",             # the TLS handshake failed (see tls.handshake_failed)
    "kicked",                 # closed by the administrator (popgate kick)
)
DELIVERY_RESULTS = ("ok", "tempfail", "failed")
DELIVERY_REASONS = (
    "",              # result=ok
    "unknown-user",  # no user store knows the recipient
    "bad-mailbox",   # the name cannot name a mailbox
    "too-big",       # over the message size limit
    "user-lookup",   # a user store could not answer
    "temporary",     # the mail store failed, worth retrying
    "disk-full",     # no space left on the device
    "quota",         # over the disk quota
    "permanent",     # the mail store refused the message for good
    "internal",      # an unexpected error (its traceback is logged too)
)

_DELIVERY_FIELDS = (
    _f("result", "token", "ok, tempfail (the MTA retries) or failed (the MTA bounces)",
       *DELIVERY_RESULTS),
    _f("reason", "token", "why it was not delivered (empty when it was)", *DELIVERY_REASONS),
    _f("recipient", "text", "the recipient address as the MTA gave it"),
    _f("user", "text", "the mailbox it was for (empty when the recipient is unknown)"),
    _f("sender", "text", "the envelope sender (empty for the null sender)"),
    _f("size", "int", "octets of the message as stored, trace headers included (0 when "
       "refused before the message was read)"),
    _DURATION,
    _WHY,
)

_LOGIN_FIELDS = (
    _f("result", "token", "ok, failed (the client's fault) or error (the server's)",
       "ok", "failed", "error"),
    _f("reason", "token", "why it failed (empty when it succeeded)", *LOGIN_REASONS),
    _LOGIN_USER,
    _f("account", "text", "the user as the user store names it (empty unless known)"),
    _METHOD, _RIP, _LIP, _TLS, _ATTEMPTS,
    _f("wait", "float", "seconds the check waited for the address's login penalty"),
    _DURATION, _WHY, _SESSION,
)

CATALOGUE: dict[str, EventType] = {}


def _event(name: str, level: LogLevel, about: str, fields: tuple[Field, ...],
           formats: str | Mapping[str, str], **levels: LogLevel) -> None:
    CATALOGUE[name] = EventType(name, level, about, fields,
                                {"": formats} if isinstance(formats, str) else formats,
                                levels)


_event("pop3.connect", LogLevel.debug, "A POP3 connection was accepted.",
       (_RIP, _LIP, _TLS, _SESSION),
       "pop3-login: Connect: rip={rip}, lip={lip}, tls={tls}, session=<{session}>")

_event("pop3.login", LogLevel.info, "One login attempt: USER/PASS, APOP or AUTH.", _LOGIN_FIELDS, {
    "ok": "pop3-login: Login: user=<{user}>, method={method}, rip={rip}, lip={lip}, tls={tls}, "
          "account=<{account}>, wait={wait}, duration={duration}, session=<{session}>",
    "failed": "pop3-login: Login failed: reason={reason}, user=<{user}>, method={method}, "
              "rip={rip}, lip={lip}, tls={tls}, attempts={attempts}, wait={wait}, "
              "duration={duration}, session=<{session}>",
    "": "pop3-login: Login error: reason={reason}, user=<{user}>, method={method}, rip={rip}, "
        "lip={lip}, tls={tls}, account=<{account}>, why=<{why}>, duration={duration}, "
        "session=<{session}>",
}, error=LogLevel.warn)

_event("pop3.disconnect", LogLevel.info, "A session ended without a successful login.", (
    _f("reason", "token", "why it ended", *END_REASONS),
    _f("user", "text", "the last user name it tried (empty when none)"),
    _METHOD, _RIP, _LIP, _TLS,
    _f("attempts", "int", "failed logins in the session"),
    _f("duration", "float", "seconds since the connection was accepted"),
    _SESSION,
), "pop3-login: Disconnected: reason={reason}, user=<{user}>, method={method}, rip={rip}, "
   "lip={lip}, tls={tls}, attempts={attempts}, duration={duration}, session=<{session}>")

_event("pop3.logout", LogLevel.info, "A logged-in session ended: what it retrieved and deleted "
       "(Dovecot's pop3_logout_format).", (
    _f("user", "text", "the user, as the user store names it"),
    _f("reason", "token", "why it ended: quit, or how it ended without deleting anything",
       *END_REASONS),
    _RIP,
    _f("retr", "int", "messages sent in full (RETR)"),
    _f("retr_bytes", "int", "octets sent for them, as on the wire"),
    _f("top", "int", "messages sent in part (TOP)"),
    _f("top_bytes", "int", "octets sent for them, as on the wire"),
    _f("deleted", "int", "messages deleted (0 unless QUIT applied the deletions)"),
    _f("deleted_bytes", "int", "their size"),
    _f("left", "int", "messages left in the maildrop"),
    _f("left_bytes", "int", "their size"),
    _f("messages", "int", "messages in the maildrop at login"),
    _f("size", "int", "their size"),
    _f("duration", "float", "seconds since the login"),
    _SESSION,
), "pop3({user}): Logout: reason={reason}, rip={rip}, retr={retr}/{retr_bytes}, "
   "top={top}/{top_bytes}, del={deleted}/{deleted_bytes}, left={left}/{left_bytes}, "
   "messages={messages}/{size}, duration={duration}, session=<{session}>")

_event("lmtp.delivery", LogLevel.info, "One recipient of an LMTP transaction: refused at RCPT, "
       "or delivered (or not) after DATA.", _DELIVERY_FIELDS + (
    _f("code", "int", "the reply code sent for it (250, 451, 550...)"),
    _f("status", "token", "the enhanced status code sent with it (2.0.0, 5.1.1...)"),
    _RIP, _SESSION,
), {
    "ok": "lmtp: Delivered: to=<{recipient}>, user=<{user}>, from=<{sender}>, size={size}, "
          "code={code}, status={status}, duration={duration}, rip={rip}, session=<{session}>",
    "": "lmtp: Delivery {result}: reason={reason}, to=<{recipient}>, user=<{user}>, "
        "from=<{sender}>, size={size}, code={code}, status={status}, why=<{why}>, "
        "duration={duration}, rip={rip}, session=<{session}>",
}, tempfail=LogLevel.warn, failed=LogLevel.warn)

_event("deliver.delivery", LogLevel.info, "One message delivered (or not) by popgate deliver.",
       _DELIVERY_FIELDS + (
    _f("exit", "int", "the sysexits(3) code the command exits with"),
), {
    "ok": "deliver: Delivered: to=<{recipient}>, user=<{user}>, from=<{sender}>, size={size}, "
          "exit={exit}, duration={duration}",
    "": "deliver: Delivery {result}: reason={reason}, to=<{recipient}>, user=<{user}>, "
        "from=<{sender}>, size={size}, exit={exit}, why=<{why}>, duration={duration}",
})

_event("auth.penalty", LogLevel.info, "A failed login from an address: its next logins wait.", (
    _f("rip", "text", "the address (an IPv6 client as its /64)"),
    _f("delay", "float", "seconds its next login waits after this failure"),
    _f("repeated", "token", "yes when the same wrong user and password were retried (the "
       "delay does not grow then)", "yes", "no"),
), "auth: Penalty: rip={rip}, delay={delay}, repeated={repeated}")

_event("limit.refused", LogLevel.debug, "A connection refused by a connection limit.", (
    _f("limit", "token", "total (--max-connections) or address (--max-connections-per-ip)",
       "total", "address"),
    _f("max", "int", "the limit"),
    _RIP,
    _f("protocol", "token", "pop3 or lmtp", "pop3", "lmtp"),
), "limit: Refused: limit={limit}, max={max}, rip={rip}, protocol={protocol}")

#: Why a connection to a haproxy: listener was closed before any session.
PROXY_REASONS = (
    "untrusted",   # its peer is not in --proxy-trusted: closed before reading
    "bad-header",  # what it sent first is not a valid PROXY header
    "timeout",     # no complete PROXY header within the time allowed
)

_event("proxy.refused", LogLevel.warn, "A connection to a haproxy: listener closed before any "
       "session: its peer is not a trusted proxy, or it sent no valid PROXY header in time.", (
    _f("reason", "token", "why it was closed", *PROXY_REASONS),
    _f("rip", "address", "the address that connected (the TCP peer, not a PROXY header's)"),
    _LIP,
), "proxy: Refused: reason={reason}, rip={rip}, lip={lip}")

_event("tls.handshake", LogLevel.debug, "A TLS handshake succeeded (told at the first command "
       "the client sends over TLS).", (
    _RIP, _LIP,
    _f("stage", "token", "pop3s (implicit TLS) or stls", "pop3s", "stls"),
    _f("version", "token", "the TLS version (TLSv1.2, TLSv1.3)"),
    _f("cipher", "token", "the cipher suite (OpenSSL's name)"),
    _SESSION,
), "tls: Handshake: stage={stage}, version={version}, cipher={cipher}, rip={rip}, lip={lip}, "
   "session=<{session}>")

_event("tls.handshake_failed", LogLevel.info, "A TLS handshake failed.", (
    _RIP, _LIP,
    _f("stage", "token", "pop3s (implicit TLS) or stls", "pop3s", "stls"),
    _WHY, _SESSION,
), "tls: Handshake failed: stage={stage}, rip={rip}, lip={lip}, why=<{why}>, session=<{session}>")

_STORE_KINDS = ("temporary", "permanent", "internal")

_event("store.error", LogLevel.warn, "A mail store operation failed.", (
    _f("op", "token", "what failed: open (a maildrop at login, or a message), read (a message "
       "being sent), commit (deletions at QUIT), deliver", "open", "read", "commit", "deliver"),
    _f("kind", "token", "temporary, permanent or internal (unexpected)", *_STORE_KINDS),
    _f("user", "text", "whose mailbox"),
    _WHY, _SESSION,
), "store: Error: op={op}, kind={kind}, user=<{user}>, why=<{why}>, session=<{session}>")

_event("userstore.error", LogLevel.warn, "A user store could not answer.", (
    _f("op", "token", "login (checking a password), lookup (a recipient) or probe (the "
       "reachability check at start-up, logged as an error)", "login", "lookup", "probe"),
    _f("kind", "token", "temporary, permanent or internal (unexpected)", *_STORE_KINDS),
    _f("user", "text", "the user asked about"),
    _WHY, _SESSION,
), "userstore: Error: op={op}, kind={kind}, user=<{user}>, why=<{why}>, session=<{session}>")

_event("config.reload", LogLevel.info, "A reload (SIGHUP): the configuration file and command "
       "line parsed again, the user stores and the TLS certificate built again; either all "
       "of it is in use now (what can change live), or none and the old configuration stays.", (
    _f("result", "token", "ok (in use now) or failed (nothing changed)", "ok", "failed"),
    _f("changed", "text", "the settings whose new value is in use, comma-separated TOML keys "
       "(empty when none changed)"),
    _f("restart_needed", "text", "the settings that changed but apply only after a restart "
       "(listeners, store, workers...), comma-separated; not applied"),
    _f("certificate", "text", "the TLS certificate now in use and when it expires (empty "
       "without TLS or when the reload failed)"),
    _WHY,
), {
    "ok": "config: Reloaded: changed=<{changed}>, restart_needed=<{restart_needed}>, "
          "certificate=<{certificate}>",
    "": "config: Reload failed, keeping the old configuration: why=<{why}>",
}, failed=LogLevel.error)


def _check_catalogue() -> None:
    for spec in CATALOGUE.values():
        names = [f.name for f in spec.fields]
        assert len(set(names)) == len(names), spec.name
        assert not set(names) & {*JSON_KEYS, *OPTIONAL_JSON_KEYS}, spec.name


_check_catalogue()


def _clean(spec: EventType, given: Mapping[str, Any]) -> dict[str, Any]:
    names = spec.names
    if given.keys() != names:
        missing, extra = sorted(names - set(given)), sorted(set(given) - names)
        raise TypeError(f"{spec.name}: missing fields {missing}, unknown fields {extra}")
    clean: dict[str, Any] = {}
    for f in spec.fields:
        value = given[f.name]
        if f.type == "int":
            value = int(value)
        elif f.type == "float":
            value = round(float(value), 3)
        elif f.type == "address":
            value = free_text(value, 64) if isinstance(value, str) else address_text(value)
        elif f.type == "text":
            value = free_text(value)
        else:
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            value = "" if value is None else str(value)
            if f.values and value not in f.values:
                raise ValueError(f"{spec.name}: {f.name}={value!r} is not one of {f.values}")
            if not f.values:
                value = free_text(value, 64).replace(" ", "_")
        clean[f.name] = value
    return clean


def emit(log: Logger, name: str, level: LogLevel | None = None, **fields: Any) -> None:
    """
    Emit the event C{name} of L{CATALOGUE} on C{log}, with every one of its
    fields: the C{log_format} is the event's text, the fields are keys of
    the event (cleaned: free text escaped, numbers typed), and
    C{event=name}.  C{level} overrides the catalogue's (debug for a fact a
    line at info already says).

    @raise TypeError: a field missing or unknown (a bug: tests emit each).
    @raise ValueError: a value not among a field's values.
    """
    spec = CATALOGUE[name]
    clean = _clean(spec, fields)
    if level is None:
        level = spec.level_for(clean)
    text = spec.format_for(clean)
    # log_text: the text rendered once, by str.format_map (in C), for
    # popgate's own log lines (L{popgate.logs}); Twisted's formatter, which
    # other observers use on log_format, costs ten times as much.
    log.emit(level, text, event=name, log_text=text.format_map(clean), **clean)


def table() -> str:
    """The catalogue in Markdown: each event, its level, text and fields."""
    lines = ["# Log events", "", (__doc__ or "").strip(), ""]
    for spec in CATALOGUE.values():
        lines += [f"## `{spec.name}` ({spec.level.name})", "", spec.about, ""]
        for result, text in spec.formats.items():
            label = f"result={result}" if result else ("other results" if len(spec.formats) > 1
                                                       else "text")
            lines.append(f"- {label}: `{text}`")
        lines += ["", "| field | type | meaning |", "|---|---|---|"]
        for f in spec.fields:
            meaning = f.meaning + (f" ({', '.join(v or '(empty)' for v in f.values)})"
                                   if f.values else "")
            lines.append(f"| `{f.name}` | {f.type} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(table())
