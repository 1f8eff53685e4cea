"""
C{popgate migrate}'s command line, and what it asks for: the old store
(C{--from}, any C{--store} string), the database (C{--to}, the
C{postgresql:} store's own argument string, so the one the server will be
given can be pasted), and whom to copy.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from twisted.python import usage

from popgate.stores.pg_settings import PGSettings, parse_args

__all__ = ["DESCRIPTION", "Plan", "add_arguments", "parse_target", "plan_from"]

DESCRIPTION = """\
Copy users' mailboxes from a Maildir or mbox store into the PostgreSQL
mail store, keeping every message's UIDL and order, so POP3 clients that
leave mail on the server do not download it all again after the switch.

The old mailboxes are only read: this is a copy, not a move. Nothing is
deleted, renamed or changed there (as on a POP3 login, popgate's lock and
size-cache files may be created). Each old mailbox is locked while it is
copied, as a POP3 session locks it; one in use is reported and left for
the next run.

A message whose UIDL the new mailbox has already is skipped, so a run can
be interrupted and run again, and a second run copies nothing more. After
each user the new mailbox is checked against the old one (every UIDL, its
size, its stored octets): one line per user, and exit status 1 if any user
was not copied or does not match.

The database needs popgate's schema: create it with `popgate db init`.

example:
  popgate migrate --from maildir:/var/mail/%d/%n \\
      --to postgresql:dsn=postgresql://popgate@db/mail --all
"""


@dataclass(frozen=True)
class Plan:
    """What the command line asks for."""

    source: str
    target: PGSettings
    users: tuple[str, ...]
    users_from: str | None
    all: bool
    dry_run: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="STORE",
                        help="the old store, as --store takes it: maildir:TEMPLATE or "
                             "mbox:TEMPLATE[,options]")
    parser.add_argument("--to", dest="target", required=True, metavar="postgresql:dsn=DSN",
                        help="the PostgreSQL store, as --store takes it "
                             "(postgresql:dsn=postgresql://USER@HOST/DB[,...])")
    parser.add_argument("--users-from", metavar="FILE",
                        help="copy the users in FILE, one a line (- for standard input; "
                             "# comments)")
    parser.add_argument("--all", action="store_true",
                        help="copy every mailbox the --from template finds on disk (needs %%u, "
                             "or %%n with %%d, in it)")
    parser.add_argument("--dry-run", action="store_true",
                        help="only say what would be copied; write nothing")
    parser.add_argument("users", nargs="*", metavar="USER",
                        help="a user, as popgate's user store names it (popgate auth test "
                             "shows the name)")


def parse_target(text: str) -> PGSettings:
    """
    C{postgresql:ARGS}, the PostgreSQL store's own argument string.

    @raise usage.UsageError: in one line.
    """
    kind, colon, argstring = text.partition(":")
    if kind != "postgresql" or not colon:
        raise usage.UsageError("--to must be the PostgreSQL store: "
                               "postgresql:dsn=postgresql://USER@HOST/DB")
    try:
        return parse_args(argstring)
    except ValueError as e:
        raise usage.UsageError(f"--to: {e}") from None


def plan_from(args: argparse.Namespace) -> Plan:
    """@raise usage.UsageError: in one line."""
    if not (args.users or args.users_from or args.all):
        raise usage.UsageError("say whom to copy: USER..., --users-from FILE or --all")
    if not args.source.partition(":")[2]:
        raise usage.UsageError("--from needs TYPE:ARGS, e.g. maildir:/var/mail/%d/%n")
    return Plan(source=args.source, target=parse_target(args.target),
                users=tuple(args.users), users_from=args.users_from, all=args.all,
                dry_run=args.dry_run)
