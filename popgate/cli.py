"""
The C{popgate} admin command.

  popgate demo [--dir var] [--port 1110]   run on an embedded default
  popgate passwd FILE USER                 add or change a bcrypt htpasswd entry
  popgate deliver -u USER [-f SENDER]      local delivery from stdin (see
                                           popgate.delivery.deliver)
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from typing import Sequence

from twisted.scripts import twistd

from popgate.cred.schemes import hash_password
from popgate.delivery import deliver
from popgate.stores.maildir import ensure_maildir

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


def passwd(args: argparse.Namespace) -> int:
    """Add or replace C{user}'s line in an htpasswd file, atomically."""
    password = args.password if args.password is not None else getpass.getpass()
    entry = f"{args.user}:{hash_password(password, prefix=False)}\n"
    lines: list[str] = []
    if os.path.exists(args.file):
        with open(args.file) as f:
            lines = [line for line in f if line.split(":", 1)[0] != args.user]
    lines.append(entry)
    tmp = args.file + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, args.file)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="popgate", description="popgate admin command")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run popgate on an embedded default (demo user, 127.0.0.1)")
    p.add_argument("--dir", default="var", help="where the demo keeps its files (default: var)")
    p.add_argument("--port", type=int, default=1110, help="POP3 port on 127.0.0.1 (default: 1110)")
    p.set_defaults(func=demo)
    p = sub.add_parser("passwd", help="add or change a user in an htpasswd file (bcrypt)")
    p.add_argument("file")
    p.add_argument("user")
    p.add_argument("--password", help="the password (default: ask)")
    p.set_defaults(func=passwd)
    deliver.add_subcommand(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
