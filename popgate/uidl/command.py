"""
C{popgate uidl import} and C{popgate uidl verify}: a line for each user,
then a summary.  Everything runs here, in order, without a reactor: the
command is a batch job, and its blocking reads (the old server, files,
the database) hold up nothing else.

Exit status: 0 every user imported (C{verify}: no message would be
downloaded again); 1 a user could not be read, imported, or (C{verify})
would download messages again; 2 a bad command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from popgate.migrate.users import read_users_file
from popgate.plural import plural
from popgate.probes import one_line
from popgate.stores import mailpath
from popgate.stores.maildir_dovecot import DEFAULT_FORMAT, parse_format
from popgate.uidl import sources, targets
from popgate.uidl.match import Matching, match
from popgate.uidl.message import Message
from popgate.uidl.pop3source import Pop3Source

EX_OK, EX_FAILED, EX_USAGE = 0, 1, 2
#: Unmatched messages listed per user and side without -v.
SHOWN = 10

DESCRIPTION = """\
Carry over the UIDLs the old POP3 server gave its clients, so that "leave
mail on server" clients do not download everything again.  Messages are
matched by a digest of the whole message (in POP3's CRLF form), then by
Message-ID and size; a UIDL is never given to two messages.  Run it with
the mail already in popgate's store; it can be run again (it changes
nothing the second time) and a user busy in a POP3 session is skipped.

Old UIDLs from one of:
  --from-pop3 HOST[:PORT]      the old server, live: logs in as each user
                               (--passwords FILE of user:password lines, or
                               --master USER --master-password-file FILE for
                               Dovecot's user*master logins), UIDL and RETR
                               (--headers-only: TOP n 0, matched by
                               Message-ID and size)
  --from-dovecot TEMPLATE      the old Maildirs' dovecot-uidlist, with
                               --uidl-format (Dovecot's pop3_uidl_format)
  --from-list TEMPLATE         a file per user of "uidl message-id" lines

Examples:
  popgate uidl import --store maildir:/var/mail/%d/%n \\
      --from-pop3 old.example.org:110 --tls starttls --passwords pw.txt --all-in-passwords
  popgate uidl verify --store mbox:/var/mail/%u --from-list /srv/uidls/%u.txt alice
"""


def add_subcommand(subparsers: Any) -> None:
    """Register C{uidl import} and C{uidl verify} with the C{popgate} command."""
    p = subparsers.add_parser("uidl", help="carry over the old server's UIDLs "
                                           "(import) and check them (verify)")
    sub = p.add_subparsers(dest="uidl_command", required=True)
    for name, func, text in (("import", run_import, "make popgate serve the old UIDLs"),
                             ("verify", run_verify, "which messages a client would "
                                                    "download again")):
        q = sub.add_parser(name, help=text, description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _arguments(q, name == "import")
        q.set_defaults(func=func)


def _arguments(p: argparse.ArgumentParser, importing: bool) -> None:
    p.add_argument("--store", required=True, metavar="STORE",
                   help="popgate's store, as --store names it: maildir:TEMPLATE, "
                        "mbox:TEMPLATE or postgresql:dsn=DSN")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-pop3", metavar="HOST[:PORT]")
    source.add_argument("--from-dovecot", metavar="TEMPLATE",
                        help="the old Maildir of each user (%%u, %%n, %%d)")
    source.add_argument("--from-list", metavar="TEMPLATE",
                        help="each user's 'uidl message-id' file (%%u, %%n, %%d)")
    p.add_argument("--uidl-format", default=DEFAULT_FORMAT,
                   help="Dovecot's pop3_uidl_format (default %(default)s)")
    p.add_argument("--tls", choices=("none", "starttls", "implicit"), default="none")
    p.add_argument("--cafile", help="CA certificates for the old server's")
    p.add_argument("--passwords", metavar="FILE", help="user:password lines")
    p.add_argument("--master", metavar="USER", help="log in as USER*MASTER")
    p.add_argument("--master-password-file", metavar="FILE")
    p.add_argument("--master-separator", default="*")
    p.add_argument("--headers-only", action="store_true",
                   help="TOP n 0 instead of RETR: cheaper, matched by Message-ID and size")
    p.add_argument("--users-from", metavar="FILE", help="users, one a line")
    p.add_argument("--all-in-passwords", action="store_true",
                   help="every user of --passwords")
    if importing:
        p.add_argument("--dry-run", action="store_true",
                       help="match and report; change nothing")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every unmatched message")
    p.add_argument("users", nargs="*", metavar="USER")


class UsageError(ValueError):
    pass


@dataclass(frozen=True)
class Plan:
    read_old: Callable[[str], list[Message]]
    users: list[str]
    store: str


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def _read_passwords(path: str) -> dict[str, str]:
    found: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            user, colon, password = line.partition(":")
            if not colon or not user:
                raise UsageError(f"{path}:{number}: not user:password")
            found[user] = password
    return found


def _host_port(text: str, tls: str) -> tuple[str, int]:
    default = 995 if tls == "implicit" else 110
    host, colon, port = text.rpartition(":")
    if not colon or "]" in port:
        return text.strip("[]"), default
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--from-pop3 {text}: bad port")
    return host.strip("[]"), int(port)


def plan_from(args: argparse.Namespace) -> Plan:
    """
    @raise UsageError: in one line.
    @raise OSError: a file named cannot be read.
    """
    passwords: dict[str, str] = {}
    if args.passwords:
        passwords = _read_passwords(args.passwords)
    read_old: Callable[[str], list[Message]]
    if args.from_pop3:
        if (args.master is None) == (args.passwords is None):
            raise UsageError("--from-pop3 needs --passwords FILE or --master USER "
                             "(with --master-password-file FILE), one of them")
        master_password = None
        if args.master is not None:
            if not args.master_password_file:
                raise UsageError("--master needs --master-password-file FILE")
            master_password = _read_secret(args.master_password_file)
        host, port = _host_port(args.from_pop3, args.tls)
        pop3 = Pop3Source(host, port, args.tls, args.cafile, args.master, master_password,
                          args.master_separator, args.headers_only)

        def read_old(user: str) -> list[Message]:
            return pop3.messages(user, passwords.get(user))
    elif args.from_dovecot:
        try:
            parts = parse_format(args.uidl_format)
        except ValueError as e:
            raise UsageError(f"--uidl-format: {e}") from None
        template = mailpath.check_template(args.from_dovecot)

        def read_old(user: str) -> list[Message]:
            return sources.from_dovecot(mailpath.expand(template, user), parts)
    else:
        list_template = mailpath.check_template(args.from_list)

        def read_old(user: str) -> list[Message]:
            return sources.from_list(mailpath.expand(list_template, user))
    names = list(args.users)
    if args.users_from:
        names += read_users_file(args.users_from)
    if args.all_in_passwords:
        if not passwords:
            raise UsageError("--all-in-passwords needs --passwords FILE")
        names += list(passwords)
    names = list(dict.fromkeys(names))
    if not names:
        raise UsageError("no users: name them (USER..., --users-from FILE, "
                         "--all-in-passwords)")
    return Plan(read_old, names, args.store)


def _listing(m: Matching, verbose: bool) -> list[str]:
    lines = []
    for label, messages in (("old UIDL {key}: no matching message in popgate's store",
                             m.old_unmatched),
                            ("message {key} (UIDL {uidl}): no old UIDL", m.new_unmatched)):
        shown = messages if verbose else messages[:SHOWN]
        lines += ["  " + label.format(key=x.key, uidl=x.uidl.decode("ascii", "replace"))
                  for x in shown]
        if len(messages) > len(shown):
            lines.append(f"  ... and {len(messages) - len(shown)} more (-v lists them)")
    return lines


def _how(m: Matching) -> str:
    counts: dict[str, int] = {}
    for how in m.how:
        counts[how] = counts.get(how, 0) + 1
    return ", ".join(f"{n} by {how}" for how, n in counts.items())


def import_user(user: str, plan: Plan, target: Any, dry_run: bool,
                verbose: bool) -> tuple[bool, list[str]]:
    """One user: (ok, lines to print)."""
    try:
        old = plan.read_old(user)
    except sources.SourceError as e:
        return False, [f"{user}: not imported: old server: {one_line(e)}"]
    try:
        with target.open(user) as mailbox:
            m = match(old, mailbox.messages)
            pairs = {new.key: o.uidl for o, new in m.pairs}
            changed = sum(1 for o, new in m.pairs if o.uidl != new.uidl) if dry_run \
                else mailbox.write(pairs)
    except (targets.TargetError, ValueError, OSError) as e:
        return False, [f"{user}: not imported: {one_line(e)}"]
    verb = "would change" if dry_run else "changed"
    line = (f"{user}: {plural(len(old), 'old UIDL')}, {len(m.pairs)} matched"
            f"{' (' + _how(m) + ')' if m.pairs else ''}, {verb} {changed}; "
            f"{len(m.old_unmatched)} old unmatched, {len(m.new_unmatched)} new unmatched")
    return True, [line, *_listing(m, verbose)]


def verify_user(user: str, plan: Plan, target: Any,
                verbose: bool) -> tuple[bool, list[str]]:
    """One user: (no message would be downloaded again, lines to print)."""
    try:
        old = plan.read_old(user)
        with target.open(user) as mailbox:
            m = match(old, mailbox.messages)
    except sources.SourceError as e:
        return False, [f"{user}: cannot verify: old server: {one_line(e)}"]
    except (targets.TargetError, ValueError, OSError) as e:
        return False, [f"{user}: cannot verify: {one_line(e)}"]
    again = [(o, n) for o, n in m.pairs if o.uidl != n.uidl]
    old_uidls = {o.uidl for o in old}
    hidden = [n for n in m.new_unmatched if n.uidl in old_uidls]
    ok = not again and not hidden
    line = (f"{user}: {'ok' if ok else 'NOT OK'}: {plural(len(m.pairs), 'message')} matched, "
            f"{len(again)} would be downloaded again, {len(hidden)} hidden under another "
            f"message's old UIDL; {len(m.new_unmatched)} new, {len(m.old_unmatched)} "
            "missing from popgate")
    lines = [line]
    shown = again if verbose else again[:SHOWN]
    lines += [f"  again: {n.key}: served as {n.uidl.decode()}, the client knows "
              f"{o.uidl.decode()}" for o, n in shown]
    lines += [f"  hidden: {n.key}: served as {n.uidl.decode()}" for n in
              (hidden if verbose else hidden[:SHOWN])]
    if verbose:
        lines += _listing(m, True)
    return ok, lines


def _fail(message: object, status: int = EX_FAILED) -> int:
    sys.stderr.write(f"popgate uidl: {one_line(message)}\n")
    return status


def _run(args: argparse.Namespace, importing: bool) -> int:
    try:
        plan = plan_from(args)
    except UsageError as e:
        return _fail(e, EX_USAGE)
    except ValueError as e:  # a template
        return _fail(e, EX_USAGE)
    except OSError as e:
        return _fail(f"cannot read {e.filename or 'a file'}: {e.strerror or e}", EX_USAGE)
    try:
        target = targets.open_target(plan.store)
    except ValueError as e:
        return _fail(f"--store: {one_line(e)}", EX_USAGE)
    except targets.TargetError as e:
        return _fail(e)
    good = 0
    try:
        for user in plan.users:
            try:
                if importing:
                    ok, lines = import_user(user, plan, target, args.dry_run, args.verbose)
                else:
                    ok, lines = verify_user(user, plan, target, args.verbose)
            except Exception as e:  # a database error, a bug: the other users go on
                ok, lines = False, [f"{user}: not done: unexpected error: "
                                    f"{type(e).__name__}: {one_line(e)}"]
            good += ok
            sys.stdout.write("".join(line + "\n" for line in lines))
            sys.stdout.flush()
    finally:
        close = getattr(target, "close", None)
        if close is not None:
            close()
    bad = len(plan.users) - good
    what = ("imported" + (" (dry run)" if importing and args.dry_run else "")) if importing \
        else "ok"
    sys.stdout.write(f"{plural(good, 'user')} {what}, {bad} not\n")
    return EX_OK if bad == 0 else EX_FAILED


def run_import(args: argparse.Namespace) -> int:
    return _run(args, True)


def run_verify(args: argparse.Namespace) -> int:
    return _run(args, False)


__all__ = ["add_subcommand", "import_user", "plan_from", "verify_user"]
