"""
The C{popgate} admin command.

  popgate --version                        popgate, Twisted, Python, OpenSSL
  popgate demo [--dir var] [--port 1110]   run on an embedded default
  popgate check-config [server options]    what start-up would refuse, and
                                           every user store reached
  popgate auth test|lookup [opts] USER     the user stores, as logins and
                                           delivery ask them
  popgate pw [-s SCHEME] [-l]              hash a password (as doveadm pw)
  popgate passwd FILE USER                 add or change an htpasswd entry
  popgate who|kick [-s SOCKET] [WHO]       the open sessions, over the
                                           admin socket
  popgate deliver -u USER [-f SENDER]      local delivery from stdin (see
                                           popgate.delivery.deliver)
  popgate migrate --from STORE --to PG USER...
                                           copy Maildir/mbox mailboxes into
                                           PostgreSQL, keeping UIDLs (see
                                           popgate.migrate)
  popgate db init|upgrade|status           the PostgreSQL mail store's schema
                                           (see popgate.admin.db)
  popgate expire [--dry-run] [server options] (--all | USER...)
                                           EXPIRE for mailboxes nobody polls
                                           (see popgate.admin.expire)
  popgate uidl import|verify --store STORE --from-... USER...
                                           carry the old server's UIDLs over
                                           (see popgate.uidl)

Each command's work is in L{popgate.admin}; this module parses and
dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from twisted.scripts import twistd

from popgate.admin import db, run
from popgate.admin.passwd import PasswdError, ask_password, check_user_name, set_password
from popgate.admin.version import versions
from popgate.cred.schemes import HASH_SCHEMES, UnknownScheme, hash_password, verify_password
from popgate.delivery import deliver
from popgate.migrate import command as migrate
from popgate.stores.maildir_delivery import ensure_maildir
from popgate.uidl import command as uidl

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"

WELCOME = """\
Return-Path: <postmaster@localhost>
From: popgate <postmaster@localhost>
To: demo <demo@localhost>
Subject: Welcome to popgate
Date: {date}
Message-ID: <welcome.{stamp}@popgate.invalid>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Hello!

This message lives in the Maildir {maildir}
and was fetched over POP3 from popgate.

Delete it (DELE 1, then QUIT) and it is gone from the Maildir;
drop the connection without QUIT and nothing changes.
.
A line with only a dot, above, is sent dot-stuffed: your client shows it as is.
"""


def prepare_demo(root: str) -> tuple[str, str]:
    """
    Create (once) an htpasswd file with the demo user and a Maildir holding
    a welcome message under C{root}.

    @return: the htpasswd path and the Maildir template.
    """
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    htpasswd = os.path.join(root, "htpasswd")
    if not os.path.exists(htpasswd):
        with open(htpasswd, "w") as f:
            f.write(f"{DEMO_USER}:{hash_password(DEMO_PASSWORD, prefix=False)}\n")
    maildir = os.path.join(root, "mail", DEMO_USER)
    fresh = not os.path.isdir(maildir)
    ensure_maildir(maildir)
    if fresh:
        stamp = int(time.time())
        text = WELCOME.format(
            date=time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(stamp)),
            stamp=stamp, maildir=maildir)
        name = f"{stamp}.M0P{os.getpid()}.popgate-demo"
        tmp = os.path.join(maildir, "tmp", name)
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(maildir, "new", name))
    return htpasswd, os.path.join(root, "mail", "%n")


def demo(args: argparse.Namespace) -> int:
    htpasswd, template = prepare_demo(args.dir)
    port = args.port
    print(f"""\
popgate demo: POP3 on 127.0.0.1:{port}
  user: {DEMO_USER}   password: {DEMO_PASSWORD}   mail: {os.path.dirname(template)}/{DEMO_USER}

Try it:
  curl pop3://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}/1      (the welcome message)
  curl pop3://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}/       (the message list)
  or a mail client: POP3 server 127.0.0.1, port {port}, no encryption.
Stop with Ctrl-C.
""", flush=True)
    argv = ["twistd", "-n", "--pidfile=", "popgate",
            "--pop3", f"tcp:{port}:interface=127.0.0.1",
            "--auth", f"htpasswd:{htpasswd}",
            "--store", f"maildir:{template}"]
    return run_twistd(argv)


def run_twistd(argv: list[str]) -> int:
    """Run twistd in this process with C{argv}."""
    sys.argv = argv
    twistd.run()
    return 0


def _fail(command: str, message: object, status: int = 1) -> int:
    sys.stderr.write(f"popgate {command}: {message}\n")
    return status


def passwd(args: argparse.Namespace) -> int:
    """Add or change C{user}'s password in an htpasswd file, atomically."""
    try:
        check_user_name(args.user)
        password = args.password if args.password is not None else ask_password(run.ask)
        found = set_password(args.file, args.user, password, args.scheme)
    except PasswdError as e:
        return _fail("passwd", e)
    except KeyboardInterrupt:
        return _fail("passwd", "interrupted: nothing changed", 130)
    print(f"{'changed' if found else 'added'} {args.user} in {args.file}")
    return 0


def pw(args: argparse.Namespace) -> int:
    """Print a hash of a password, as C{doveadm pw}."""
    if args.list:
        width = max(len(name) for name in HASH_SCHEMES)
        for name, about in HASH_SCHEMES.items():
            print(f"{name:<{width}}  {about}")
        return 0
    scheme = args.scheme.upper()
    if scheme not in HASH_SCHEMES:
        return _fail("pw", f"unknown scheme {args.scheme!r} (popgate pw -l lists them)", 2)
    try:
        password = args.password if args.password is not None else ask_password(run.ask)
    except PasswdError as e:
        return _fail("pw", e)
    except KeyboardInterrupt:
        return _fail("pw", "interrupted", 130)
    if not password:
        return _fail("pw", "empty password refused")
    if args.test is not None:
        try:
            ok = verify_password(password.encode("utf-8"), args.test, default_scheme=scheme)
        except UnknownScheme as e:
            return _fail("pw", e)
        print(f"{args.test} ({'verified' if ok else 'does not match'})")
        return 0 if ok else 1
    try:
        print(hash_password(password, scheme, rounds=args.rounds))
    except ValueError as e:
        return _fail("pw", e)
    return 0


class _Versions(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions and exit")

    def __call__(self, parser: object, *args: object) -> None:
        print("\n".join(versions()))
        raise SystemExit(0)


#: Commands that take twistd popgate's options: parsed by popgate.tap, not argparse.
_SERVER_OPTION_COMMANDS = {
    "check-config": ("check a configuration: parse, build, reach the mail store and every "
                     "user store ([--uid USER] [--gid GROUP] [server options])"),
    "auth": "test a password or look a user up (auth test|lookup [server options] USER)",
    "expire": ("remove retrieved mail past its EXPIRE from mailboxes nobody polls "
               "([--dry-run] [server options] (--all | USER...))"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-config":
        if argv[1:2] in (["-h"], ["--help"]):
            print(CHECK_CONFIG_USAGE)
            return 0
        return run.run_check_config(argv[1:])
    if argv and argv[0] == "auth":
        return run.run_auth(argv[1:])
    if argv and argv[0] == "expire":
        return run.run_expire(argv[1:])
    parser = argparse.ArgumentParser(prog="popgate", description="popgate admin command")
    parser.add_argument("--version", action=_Versions)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, about in _SERVER_OPTION_COMMANDS.items():
        sub.add_parser(name, help=about, add_help=False)  # listed; parsed above
    p = sub.add_parser("demo", help="run popgate on an embedded default (demo user, 127.0.0.1)")
    p.add_argument("--dir", default="var", help="where the demo keeps its files (default: var)")
    p.add_argument("--port", type=int, default=1110, help="POP3 port on 127.0.0.1 (default: 1110)")
    p.set_defaults(func=demo)
    p = sub.add_parser("passwd", help="add or change a user in an htpasswd file (bcrypt)",
                       description="Add or change a user's password in an htpasswd file: "
                       "asked twice, written atomically, the file's mode and owner kept "
                       "(a new file is 0640).")
    p.add_argument("file")
    p.add_argument("user")
    p.add_argument("--password", help="the password (default: ask twice, without echo)")
    p.add_argument("-s", "--scheme", default="BLF-CRYPT",
                   choices=["BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT",
                            "SCRAM-SHA-256", "SCRAM-SHA-1"],
                   help="the hash (default: BLF-CRYPT, bcrypt as htpasswd -B; SCRAM keys "
                        "serve popgate's SCRAM logins, Apache cannot check them)")
    p.set_defaults(func=passwd)
    p = sub.add_parser("pw", help="hash a password for a user store (as doveadm pw)",
                       description="Print PASSWORD hashed in SCHEME, with its {SCHEME} "
                       "prefix, for passwd-files, SQL columns and LDAP userPassword.")
    p.add_argument("-s", "--scheme", default="BLF-CRYPT", help="the scheme (default: BLF-CRYPT)")
    p.add_argument("-p", "--password", help="the password (default: ask twice, without echo)")
    p.add_argument("-r", "--rounds", type=int, help="the cost (bcrypt's log2 cost, crypt rounds, "
                   "Argon2 time cost)")
    p.add_argument("-t", "--test", metavar="HASH", help="check the password against HASH instead")
    p.add_argument("-l", "--list", action="store_true", help="list the schemes")
    p.set_defaults(func=pw)
    for name, about in (("who", "list the open sessions of a running server"),
                        ("kick", "close the sessions of a user or an address")):
        p = sub.add_parser(name, help=about, description=f"{about[0].upper()}{about[1:]}, over "
                           "its admin socket (the server's --admin-socket).")
        p.add_argument("match", nargs="?" if name == "who" else None, default="",
                       metavar="USER|IP|NETWORK", help="a user, an address or a network "
                       "such as 192.0.2.0/24" + (" (default: every session)"
                                                  if name == "who" else ""))
        p.add_argument("-s", "--socket", help="the admin socket")
        p.add_argument("-c", "--config", help="the server's configuration file: its "
                       "admin_socket")
        p.set_defaults(func=_admin_command(name))
    deliver.add_subcommand(sub)
    migrate.add_subcommand(sub)
    uidl.add_subcommand(sub)
    db.add_subcommand(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


CHECK_CONFIG_USAGE = """\
usage: popgate check-config [--uid USER] [--gid GROUP] [server options]

Parse the options as twistd popgate does (--config FILE, or --auth, --store,
--pop3 ...), build the stores, certificate and listeners without listening,
check the files as the --uid user, and reach every user store (read the file,
connect and bind to LDAP, run the SQL queries) and a PostgreSQL mail store
(connect, check the schema).  One line per problem; exit 0 with an ok summary,
or 1."""


def _admin_command(name: str) -> Any:
    def command(args: argparse.Namespace) -> int:
        call = run.run_who if name == "who" else run.run_kick
        return call(args.socket, args.config, args.match or "")

    return command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
