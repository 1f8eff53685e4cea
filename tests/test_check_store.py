"""
C{check-config} probes the mail store when it can be (L{IReachable}), and
a store whose library is missing (C{--store postgresql:} without psycopg)
is one line, in the server, C{check-config}, C{popgate db} and
C{popgate migrate}: no network, no processes (the PostgreSQL store is
handed a connection opener that fails).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from popgate import errors, tap
from popgate.admin import check, db
from popgate.backends import build_checker, build_store
from popgate.interfaces import IReachable
from popgate.migrate.target import TargetError, open_target
from popgate.optional import is_missing_dependency, missing_library
from popgate.settings import Config
from popgate.stores import registry
from popgate.stores.memory import MemoryStore
from popgate.stores.pg_settings import parse_args
from tests.helpers import InlineReactor

pytestmark = pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")

_sync = SynchronousTestCase()

#: What --store postgresql says without psycopg.
NO_PSYCOPG = "the psycopg module is missing: pip install 'popgate[sql]'"


@implementer(IReachable)
class _Reachable(MemoryStore):
    """A mail store whose probe answers C{result}."""

    def __init__(self, result: defer.Deferred[str]) -> None:
        super().__init__()
        self.result = result

    def probe(self) -> defer.Deferred[str]:
        return self.result


def _probe(found: check.Findings, description: str = "fake:x") -> None:
    d = defer.Deferred.fromCoroutine(check.probe_mail_store(found, description,
                                                            MemoryReactorClock()))
    _sync.successResultOf(d)


# -- check-config's probe of the mail store


def test_a_reachable_mail_store_says_what_answered() -> None:
    found = check.Findings(fine=["store fake", "1 listener"],
                           store=_Reachable(defer.succeed("schema version 1,\n3 mailboxes")))
    _probe(found)
    assert found.problems == []
    assert found.fine == ["store fake (schema version 1, 3 mailboxes)", "1 listener"]


def test_an_unreachable_mail_store_is_one_problem_before_the_user_stores() -> None:
    hanging: defer.Deferred[str] = defer.Deferred()
    found = check.Findings(problems=["--pop3 x: bad"], fine=["store fake"],
                           store=_Reachable(hanging))
    d = defer.Deferred.fromCoroutine(check.probe_mail_store(found, "fake:x",
                                                            MemoryReactorClock()))
    found.problems.append("--auth sql: down")  # a user store's probe answered first
    hanging.errback(errors.TemporaryFailure("cannot connect to\n  db:5432"))
    _sync.successResultOf(d)
    assert found.problems == ["--pop3 x: bad", "--store fake: cannot connect to db:5432",
                              "--auth sql: down"]
    assert found.fine == []
    lines: list[str] = []
    assert check.report(found, lines.append) == 1


def test_a_store_without_a_probe_is_left_alone() -> None:
    found = check.Findings(fine=["store memory"], store=MemoryStore())
    _probe(found, "memory:")
    assert found.fine == ["store memory"] and found.problems == []
    nothing = check.Findings()  # the store could not be built: its problem is there already
    _probe(nothing)
    assert nothing.problems == []


def test_the_postgresql_store_probe_is_one_line_when_the_server_is_down() -> None:
    from popgate.stores.postgresql import PostgresStore

    def refused() -> Any:
        raise errors.TemporaryFailure("cannot connect to postgresql://db/mail: connection "
                                      "refused\nIs the server running?")

    store = PostgresStore(parse_args("dsn=postgresql://db/mail"), InlineReactor(), opener=refused)
    found = check.Findings(fine=["store postgresql"], store=store)
    _probe(found, "postgresql:dsn=postgresql://db/mail")
    assert found.problems == ["--store postgresql: cannot connect to postgresql://db/mail: "
                              "connection refused Is the server running?"]


def test_check_config_runs_the_store_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _Reachable(defer.fail(errors.TemporaryFailure("no popgate schema")))
    monkeypatch.setattr(check, "build_store", lambda config, reactor: store)
    found, probes = check.check_config(["--store", "memory:", "--auth", "memory:a:b"],
                                       MemoryReactorClock())
    assert probes is not None
    _sync.successResultOf(defer.Deferred.fromCoroutine(probes()))
    assert found.problems == ["--store memory: no popgate schema"]


# -- a missing psycopg


@pytest.fixture
def no_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg as if not installed: C{import psycopg} raises
    ModuleNotFoundError, and the modules that import it are imported anew."""
    monkeypatch.setitem(sys.modules, "psycopg", None)
    for module in ("popgate.stores.postgresql", "popgate.stores.pg_connections",
                   "popgate.stores.pg_source"):
        monkeypatch.delitem(sys.modules, module, raising=False)


def _pg_config() -> Config:
    options = tap.Options()
    options.parseOptions(["--store", "postgresql:dsn=postgresql://db/mail", "--auth",
                          "memory:a:b"])
    return options.config


@pytest.mark.usefixtures("no_psycopg")
def test_the_server_says_which_package_to_install() -> None:
    with pytest.raises(usage.UsageError) as e:
        build_store(_pg_config(), MemoryReactorClock())
    assert str(e.value) == f"--store: postgresql: {NO_PSYCOPG}"


@pytest.mark.usefixtures("no_psycopg")
def test_check_config_says_it_in_one_line() -> None:
    found = check.build_parts(_pg_config(), MemoryReactorClock())
    assert found.problems == [f"--store: postgresql: {NO_PSYCOPG}"]


@pytest.mark.usefixtures("no_psycopg")
def test_the_sql_user_store_says_it_too() -> None:
    with pytest.raises(usage.UsageError, match=r"^--auth sql: .*psycopg module is missing "
                                                r"\(pip install 'popgate\[sql\]'\)$"):
        build_checker("sql:dsn=postgresql://db/users")


@pytest.mark.usefixtures("no_psycopg")
def test_popgate_db_and_migrate_say_it(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(action="status", config=None,
                              store="postgresql:dsn=postgresql://db/mail")
    assert db.run(args) == 1
    assert capsys.readouterr().err == f"popgate db: {NO_PSYCOPG}\n"
    with pytest.raises(TargetError, match=r"^" + NO_PSYCOPG.replace("[", r"\[") + "$"):
        open_target(parse_args("dsn=postgresql://db/mail"))


def test_psycopg_without_libpq_names_the_binary_extra() -> None:
    error = ImportError("no pq wrapper available.\nAttempts made:\n- couldn't import psycopg "
                        "'c' implementation: No module named 'psycopg_c'")
    assert missing_library(error) == ("psycopg cannot be imported (no pq wrapper available.): "
                                      "pip install 'psycopg[binary]'")
    assert missing_library(ModuleNotFoundError("x", name="psycopg.pq")) == NO_PSYCOPG


def test_popgates_own_import_errors_stay_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not is_missing_dependency(ImportError("circular", name="popgate.stores.x"))
    factory = registry.store_factories()["postgresql"]

    def broken(argstring: str, reactor: Any) -> Any:
        raise ImportError("cannot import name 'x'", name="popgate.stores.pg_schema")

    monkeypatch.setattr(factory, "makeStore", broken)
    with pytest.raises(ImportError):
        registry.make_store("postgresql:dsn=postgresql://db/mail", MemoryReactorClock())
