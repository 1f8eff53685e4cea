"""
Third-party plugins, for real: a throwaway package outside the source tree
ships its own dropins (a mail store and a user store), pip installs it into
a directory of its own, and the real C{twistd popgate} finds and uses both,
with no change to popgate.  The dev venv is never modified: the package
reaches the twistd process through PYTHONPATH, as any installed package
reaches Python's import system.
"""

from __future__ import annotations

import importlib.util
import os
import poplib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.popgate_server import REPO, PopgateProcess, run_twistd

pytestmark = pytest.mark.integration

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-popgate"
version = "1.0"
description = "Acme's mail and user stores for popgate"

# twisted/plugins has no __init__.py: find it as a namespace package, and
# only it, never twisted/ itself.
[tool.setuptools.packages.find]
include = ["acme_popgate*", "twisted.plugins"]
namespaces = true
"""

# The package itself: a mail store whose mailboxes are Twisted IMailboxes
# (popgate adapts them), and a checker with users from its argument.
ACME_MODULE = '''
"""Acme's stores for popgate."""

import io

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.mail.pop3 import IMailbox
from zope.interface import implementer


@implementer(IMailbox)
class AcmeMailbox:
    def __init__(self, messages):
        self.messages = messages
        self.deleted = set()

    def listMessages(self, i=None):
        sizes = [0 if n in self.deleted else len(m) for n, m in enumerate(self.messages)]
        return sizes if i is None else sizes[i]

    def getMessage(self, i):
        return io.BytesIO(self.messages[i])

    def getUidl(self, i):
        return b"acme-%d" % i

    def deleteMessage(self, i):
        self.deleted.add(i)

    def undeleteMessages(self):
        self.deleted.clear()

    def sync(self):
        pass


class AcmeStore:
    def __init__(self, text):
        self.text = text

    def open_maildrop(self, avatar_id):
        body = "Subject: from acme\\r\\nTo: %s\\r\\n\\r\\n%s\\r\\n" % (avatar_id, self.text)
        return AcmeMailbox([body.encode("utf-8"), b"Subject: two\\r\\n\\r\\n.hidden dot\\r\\n"])


@implementer(ICredentialsChecker)
class AcmeChecker:
    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users):
        self.users = users

    def requestAvatarId(self, credentials):
        name = credentials.username.decode("utf-8")
        if self.users.get(name) == credentials.password.decode("utf-8"):
            return defer.succeed(name)
        return defer.fail(UnauthorizedLogin())


def make_store(argstring):
    if not argstring:
        raise ValueError("acme: say what the message says, e.g. acme:hello")
    return AcmeStore(argstring)


def make_checker(argstring):
    users = dict(item.split("=", 1) for item in argstring.split(",") if item)
    return AcmeChecker(users)
'''

# The dropins: tiny, heavy imports deferred to the methods.
ACME_STORE_DROPIN = '''
from twisted.plugin import IPlugin
from zope.interface import implementer

from popgate.interfaces import IMailStoreFactory


@implementer(IMailStoreFactory, IPlugin)
class AcmeStoreFactory:
    storeType = "acme"
    storeHelp = "Acme's generated mailboxes."
    argStringFormat = "acme:TEXT"

    def makeStore(self, argstring):
        from acme_popgate import make_store

        return make_store(argstring)


acme_store = AcmeStoreFactory()
'''

ACME_AUTH_DROPIN = '''
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICheckerFactory, IPlugin)
class AcmeCheckerFactory:
    authType = "acme"
    authHelp = "Acme's users, given on the command line."
    argStringFormat = "acme:user=password[,user=password...]"
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring=""):
        from acme_popgate import make_checker

        return make_checker(argstring)


acme_auth = AcmeCheckerFactory()
'''


def write_package(root: Path) -> Path:
    source = root / "acme-src"
    (source / "acme_popgate").mkdir(parents=True)
    (source / "twisted" / "plugins").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "acme_popgate" / "__init__.py").write_text(textwrap.dedent(ACME_MODULE))
    (source / "twisted" / "plugins" / "acme_store.py").write_text(ACME_STORE_DROPIN)
    (source / "twisted" / "plugins" / "acme_auth.py").write_text(ACME_AUTH_DROPIN)
    return source


@pytest.fixture(scope="module")
def acme_site(tmp_path_factory) -> Path:
    """acme-popgate, pip-installed into a directory of its own."""
    root = tmp_path_factory.mktemp("acme")
    source = write_package(root)
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(source)],
                   check=True, timeout=600, cwd=root)
    return target


def test_the_installed_package_is_a_proper_dropin(acme_site):
    assert (acme_site / "twisted" / "plugins" / "acme_store.py").is_file()
    assert (acme_site / "twisted" / "plugins" / "acme_auth.py").is_file()
    assert not (acme_site / "twisted" / "__init__.py").exists()
    assert not (acme_site / "twisted" / "plugins" / "__init__.py").exists()
    assert list(acme_site.glob("acme_popgate-1.0.dist-info"))
    # The dev venv did not change.
    assert importlib.util.find_spec("acme_popgate") is None


def test_twistd_lists_the_plugins(acme_site, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(acme_site))
    stores = run_twistd(["popgate", "--help-stores"])
    assert "acme: Acme's generated mailboxes." in stores.stdout, stores.stdout + stores.stderr
    auth = run_twistd(["popgate", "--help-auth"])
    assert "acme" in auth.stdout, auth.stdout + auth.stderr


def test_twistd_popgate_serves_from_the_acme_plugins(acme_site, monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(acme_site))
    args = ["--auth", "acme:alice=wonderland,bob=builder", "--store", "acme:Hello from Acme",
            "--auth-failure-delay", "0"]
    with PopgateProcess(args, log_path=str(tmp_path / "popgate.log")) as server:
        client = poplib.POP3("127.0.0.1", server.port, timeout=20)
        client.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_("wrong")
        client.user("alice")
        assert client.pass_("wonderland").startswith(b"+OK"), server.log()
        first = b"Subject: from acme\r\nTo: alice\r\n\r\nHello from Acme\r\n"
        second = b"Subject: two\r\n\r\n.hidden dot\r\n"
        assert client.list()[1] == [b"1 %d" % len(first), b"2 %d" % len(second)]
        reply, lines, _ = client.retr(1)
        assert reply == b"+OK %d octets" % len(first)
        assert lines == [b"Subject: from acme", b"To: alice", b"", b"Hello from Acme"]
        assert client.retr(2)[1][-1] == b".hidden dot"
        assert client.uidl()[1] == [b"1 acme-0", b"2 acme-1"]
        client.dele(1)
        assert client.quit() == b"+OK Logging out, messages deleted."
    assert os.path.isdir(acme_site / "twisted" / "plugins")


# -- the example in the documentation, as written


def documented_files(doc: str = "extending.md") -> dict[str, str]:
    """
    The code blocks of a page of docs/ (by default "Writing a plugin",
    docs/extending.md) whose first line names a file (C{# eml_store/__init__.py}),
    by file name; the README's if the page is not there.
    """
    path = os.path.join(REPO, "docs", doc)
    if not os.path.exists(path):
        path = os.path.join(REPO, "README.md")
    with open(path) as f:
        text = f.read()
    files = {}
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", text, re.S):
        first, _, _ = block.partition("\n")
        match = re.fullmatch(r"# ([\w./-]+\.(?:py|toml))", first)
        if match:
            files[match.group(1)] = block
    return files


def test_the_documented_plugins_work(tmp_path, monkeypatch):
    files = documented_files()
    source = tmp_path / "eml-src"
    for name in ("pyproject.toml", "eml_store/__init__.py", "eml_store/checker.py",
                 "twisted/plugins/eml_store_plugin.py"):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[name])
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(site), str(source)], check=True, timeout=600, cwd=tmp_path)
    assert (site / "twisted" / "plugins" / "eml_store_plugin.py").is_file()
    assert not (site / "twisted" / "plugins" / "__init__.py").exists()

    tokens = tmp_path / "tokens"
    tokens.write_text("alice t0ken\n")
    mail = tmp_path / "mail"
    (mail / "alice").mkdir(parents=True)
    (mail / "alice" / "1.eml").write_bytes(b"Subject: one\n\n.dot line\n")
    (mail / "alice" / "2.eml").write_bytes(b"Subject: two\n\nbye\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    args = ["--store", f"eml:{mail}", "--auth", f"tokens:{tokens}", "--auth-failure-delay", "0"]
    with PopgateProcess(args, log_path=str(tmp_path / "popgate.log")) as server:
        client = poplib.POP3("127.0.0.1", server.port, timeout=20)
        client.user("alice")
        assert client.pass_("t0ken").startswith(b"+OK"), server.log()
        assert client.list()[1] == [b"1 27", b"2 21"]  # CRLF sizes
        assert client.retr(1)[1] == [b"Subject: one", b"", b".dot line"]
        client.dele(1)
        assert client.quit().startswith(b"+OK")
        other = poplib.POP3("127.0.0.1", server.port, timeout=20)
        other.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            other.pass_("wrong")
        other.quit()
    assert sorted(os.listdir(mail / "alice")) == ["2.eml"]
