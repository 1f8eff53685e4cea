"""The shipped examples in etc/ stay valid: the config loads, the user
files log their documented users in."""

from __future__ import annotations

import os

from twisted.cred.credentials import UsernamePassword
from twisted.trial.unittest import SynchronousTestCase

from popgate import config
from popgate.cred.htpasswd import HtpasswdChecker
from popgate.cred.passwdfile import PasswdFileChecker
from tests.helpers import InlineReactor
from tests.popgate_server import REPO

ETC = os.path.join(REPO, "etc")
_sync = SynchronousTestCase()


def test_toml_example_loads():
    values = config.load(os.path.join(ETC, "popgate.toml.example"))
    assert values["store"].startswith("maildir:")
    assert values["auth"] and values["pop3"]


def test_htpasswd_example_logs_alice_in():
    checker = HtpasswdChecker(os.path.join(ETC, "htpasswd.example"), reactor=InlineReactor())
    d = checker.requestAvatarId(UsernamePassword(b"alice", b"alice-password"))
    assert _sync.successResultOf(d) == "alice"


def test_passwd_file_example_logs_users_in():
    checker = PasswdFileChecker(os.path.join(ETC, "passwd-file.example"), reactor=InlineReactor())
    for user, password in (("alice", "alice-password"), ("bob", "bob-password"),
                           ("carol", "carol-password")):
        name = f"{user}@example.org"
        d = checker.requestAvatarId(UsernamePassword(name.encode(), password.encode()))
        assert _sync.successResultOf(d) == name
