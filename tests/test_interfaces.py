"""
verifyObject for every implementation of every interface in popgate: the
maildrops, the mail stores, delivery targets, user lookups, the store and
checker plugins, the checkers, and the odd Twisted interface popgate
implements.  A discovery test walks the package, so a new implementation
without a case here fails the suite instead of going unchecked.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.portal import IRealm
from twisted.cred.strcred import ICheckerFactory, findCheckerFactories
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    ILoggingContext,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IPushProducer,
    IReadDescriptor,
    IStreamServerEndpoint,
    IWriteDescriptor,
)
from twisted.logger import ILogObserver
from twisted.mail import maildir as twisted_maildir
from twisted.plugin import IPlugin, getPlugins
from twisted.web.iweb import IBodyProducer
from zope.interface import Interface, implementedBy
from zope.interface.verify import verifyObject

import popgate
from popgate.interfaces import (
    IAuthenticatingStore,
    ICachedMessageSource,
    IDeferredMessageSource,
    IDeliveryTarget,
    ILoadingMaildrop,
    ILoginHistory,
    IMaildrop,
    IMailStore,
    IMailStoreFactory,
    IMessageSource,
    IOAuthCredentials,
    IPerUserPolicy,
    IReachable,
    IRetrievalRecord,
    IScramCredentials,
    IScramLookup,
    ISeenMaildrop,
    ITokenValidator,
    ITokenValidatorFactory,
    ITopMaildrop,
    IUserLookup,
    IWireMessageSource,
)
from tests.helpers import InlineReactor

Case = Callable[[Any], Any]


def _memory_maildrop(tmp: Any) -> Any:
    from popgate.stores.memory import MemoryStore

    store = MemoryStore()
    store.add_message("alice", b"Subject: x\n\nhi\n")
    return store.open_maildrop("alice")


def _maildir_store(tmp: Any) -> Any:
    from popgate.stores.maildir import MaildirStore

    return MaildirStore(str(tmp / "%n"), reactor=InlineReactor())


def _maildir_maildrop(tmp: Any) -> Any:
    d = _maildir_store(tmp).open_maildrop("alice")
    assert d.called
    return d.result


def _mailbox_maildrop(tmp: Any) -> Any:
    from popgate.stores.twistedmailbox import MailboxMaildrop

    maildrop = MailboxMaildrop(twisted_maildir.StringListMailbox([b"a\n"]), InlineReactor())
    assert maildrop.load().called
    return maildrop


def _mbox_store(tmp: Any) -> Any:
    from popgate.stores.mbox import MboxStore, parse_argstring

    return MboxStore(parse_argstring(str(tmp / "%n")), reactor=InlineReactor())


def _mbox_maildrop(tmp: Any) -> Any:
    (tmp / "alice").write_bytes(b"From a@b Thu Jan  1 00:00:00 2024\nSubject: x\n\nhi\n")
    d = _mbox_store(tmp).open_maildrop("alice")
    assert d.called
    return d.result


def _faulty_maildrop(tmp: Any) -> Any:
    from popgate.testing.faults import Faults, FaultyMaildrop

    return FaultyMaildrop(_memory_maildrop(tmp), Faults())


def _bytes_source(tmp: Any) -> Any:
    return _memory_maildrop(tmp).open_message(0)


def _file_source(tmp: Any) -> Any:
    drop = _maildir_maildrop(tmp)
    (tmp / "alice" / "new" / "1.M1P1.h").write_bytes(b"a\n")
    drop.close()
    # Inline when the kernel has the file cached, else a (fired) Deferred.
    source = _maildir_maildrop(tmp).open_message(0)
    return source.result if isinstance(source, Deferred) else source


def _mbox_source(tmp: Any) -> Any:
    return _mbox_maildrop(tmp).open_message(0)


def _mailbox_source(tmp: Any) -> Any:
    d = _mailbox_maildrop(tmp).open_message(0)
    assert d.called
    return d.result


def _dropping_source(tmp: Any) -> Any:
    from popgate.testing.faults import Faults, FaultyMaildrop

    d = FaultyMaildrop(_memory_maildrop(tmp), Faults(drop_during_retr=True)).open_message(0)
    assert d.called
    return d.result


def _faulty_store(tmp: Any) -> Any:
    from popgate.stores.memory import MemoryStore
    from popgate.testing.faults import Faults, FaultyStore

    return FaultyStore(MemoryStore(), Faults(), InlineReactor())


def _memory_store(tmp: Any) -> Any:
    from popgate.stores.memory import MemoryStore

    return MemoryStore()


def _htpasswd(tmp: Any) -> Any:
    from popgate.cred.htpasswd import make_checker

    path = tmp / "htpasswd"
    path.write_text("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    return make_checker(str(path))


def _passwd_file(tmp: Any) -> Any:
    from popgate.cred.passwdfile import make_checker

    path = tmp / "passwd"
    path.write_text("alice:{PLAIN}secret::::::\n")
    return make_checker(str(path))


def _ldap(tmp: Any) -> Any:
    from popgate.cred.ldap import make_checker

    return make_checker("url=ldap://127.0.0.1:1/,base=dc=example,dc=org")


def _sql(tmp: Any) -> Any:
    from popgate.cred.sql import SQLChecker

    return SQLChecker(f"sqlite:///{tmp / 'users.db'}", reactor=InlineReactor())


def _maildir_history(tmp: Any) -> Any:
    from popgate.stores.history import login_history

    return login_history(_maildir_store(tmp))


def _mbox_history(tmp: Any) -> Any:
    from popgate.stores.history import login_history

    return login_history(_mbox_store(tmp))


def _retrieval_record(tmp: Any) -> Any:
    from popgate.stores.history import retrieval_record

    return retrieval_record(_maildir_maildrop(tmp))


def _pg_login_history(tmp: Any) -> Any:
    from popgate.stores.pg_history import PostgresLoginHistory

    return PostgresLoginHistory(_pg_store(tmp))


def _pg_retrieval_record(tmp: Any) -> Any:
    from popgate.stores.pg_history import PostgresRetrievalRecord

    return PostgresRetrievalRecord(_pg_store(tmp), 1, [1, 2])


def _chain(tmp: Any) -> Any:
    from popgate.cred.chain import ChainedChecker

    return ChainedChecker([_htpasswd(tmp), _passwd_file(tmp)])


def _memory_checker(tmp: Any) -> Any:
    from popgate.cred.memory import MemoryChecker

    return MemoryChecker({"alice": "secret"})


def _cache(tmp: Any) -> Any:
    from twisted.internet.task import Clock

    from popgate.cred.cache import CachingChecker

    return CachingChecker(_htpasswd(tmp), clock=Clock())


def _pg_store(tmp: Any) -> Any:
    from popgate.stores.postgresql import make_store

    return make_store("dsn=postgresql://popgate@127.0.0.1:1/mail", InlineReactor())


class _FakeConnection:
    pgconn = None


def _reactor_link(tmp: Any) -> Any:
    from popgate.stores.pg_reactor import ReactorLink

    return ReactorLink(InlineReactor(), _FakeConnection(), 5.0)  # type: ignore[arg-type]


def _pg_maildrop(tmp: Any) -> Any:
    from popgate.stores.pg_session import PostgresMaildrop

    return PostgresMaildrop(_pg_store(tmp), "alice", _reactor_link(tmp), 1, [(1, "1.ab", 3, 2)])


def _chunk_source(tmp: Any) -> Any:
    from popgate.stores.pg_source import ChunkSource

    return ChunkSource(lambda message_id, seq: None, 1, 2, b"hi")


def _proxy_store(tmp: Any) -> Any:
    from popgate.stores.proxy_store import make_store

    return make_store("upstream=pop3://127.0.0.1:1", InlineReactor())


def _proxy_maildrop(tmp: Any) -> Any:
    from popgate.stores.pop3_upstream import UpstreamProtocol
    from popgate.stores.proxy_store import ProxyMaildrop

    return ProxyMaildrop(UpstreamProtocol(InlineReactor(), 1), "bob")


def _proxy_source(tmp: Any) -> Any:
    from popgate.stores.pop3_upstream import UpstreamProtocol
    from popgate.stores.proxy_source import UpstreamMessage

    return UpstreamMessage(UpstreamProtocol(InlineReactor(), 1))


def _imap_store(tmp: Any) -> Any:
    from popgate.stores.imap_store import make_store

    return make_store("upstream=imap://127.0.0.1:1", InlineReactor())


def _imap_maildrop(tmp: Any) -> Any:
    from popgate.stores.imap_store import ImapMaildrop
    from popgate.stores.imap_upstream import ImapProtocol

    return ImapMaildrop(ImapProtocol(InlineReactor(), 1), "bob")


def _upstream_checker(tmp: Any) -> Any:
    return _proxy_store(tmp).checkers([])[0]


def _password_forwarder(tmp: Any) -> Any:
    from popgate.cred.memory import MemoryChecker
    from popgate.stores.proxy_auth import PasswordForwarder

    return PasswordForwarder(MemoryChecker({"bob": "pw"}))


def _realm(tmp: Any) -> Any:
    from popgate.realm import MaildropRealm
    from popgate.stores.memory import MemoryStore

    return MaildropRealm(MemoryStore(), InlineReactor())


def _apop(tmp: Any) -> Any:
    from popgate.pop3.apop import APOPCredentials

    return APOPCredentials(b"<1.2@host>", b"alice", b"0" * 32)


def _output_gate(tmp: Any) -> Any:
    from popgate.pop3.output import OutputGate

    return OutputGate(lambda: None, lambda: None, lambda: None)


def _watched_endpoint(tmp: Any) -> Any:
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.testing import MemoryReactor

    from popgate.limits.accept_errors import _WatchedEndpoint

    return _WatchedEndpoint(TCP4ServerEndpoint(MemoryReactor(), 0), lambda port: None)


def _pop3_protocol(tmp: Any) -> Any:
    from twisted.cred.portal import Portal
    from twisted.internet.task import Clock

    from popgate.pop3.factory import POP3ServerFactory

    return POP3ServerFactory(Portal(None), None, Clock()).buildProtocol(None)


def _message_sender(tmp: Any) -> Any:
    from popgate.pop3.encoder import MessageEncoder
    from popgate.pop3.output import MessageSender

    return MessageSender(_output_gate(tmp), io.BytesIO(b""), MessageEncoder(None),
                         lambda data: None, lambda: None)


def _cram_md5(tmp: Any) -> Any:
    from popgate.pop3.sasl import CramMD5Credentials

    return CramMD5Credentials(b"<1.2@h>", b"u", b"0" * 32)


def _scram_credentials(tmp: Any) -> Any:
    from popgate.pop3.scram import ScramCredentials

    return ScramCredentials("SCRAM-SHA-256", b"u", b"n=u,r=x", b"0" * 32)


def _server_log(tmp: Any) -> Any:
    from popgate.logs import file_log

    return file_log(io.StringIO(), "json", "info")


def _metrics(tmp: Any) -> Any:
    from popgate.metrics import Metrics

    return Metrics(process=False)


def _server_tls(tmp: Any) -> Any:
    from popgate.tls import ServerTLS
    from tests.tlscerts import make_pki

    pki = make_pki(tmp / "pki")
    return ServerTLS(str(pki.cert), str(pki.key))


def _oauth_credentials(tmp: Any) -> Any:
    from popgate.oauth import OAuthCredentials

    return OAuthCredentials(b"u", b"token")


def _jwks(tmp: Any) -> str:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
    path = tmp / "jwks.json"
    path.write_text('{"keys": [' + key + "]}")
    return str(path)


def _jwt_validator(tmp: Any) -> Any:
    from twisted.internet.task import Clock

    from popgate.oauth.jwt_validator import make_validator

    return make_validator(f"jwks_file={_jwks(tmp)},issuer=i,audience=a", Clock())


def _token_checker(tmp: Any) -> Any:
    from popgate.oauth import TokenChecker

    return TokenChecker(_jwt_validator(tmp))


def _introspection_validator(tmp: Any) -> Any:
    from twisted.internet.task import Clock

    from popgate.oauth.introspect import make_validator

    secret = tmp / "secret"
    secret.write_text("s")
    return make_validator(f"url=https://idp/i,client_id=c,client_secret_file={secret}", Clock())


def _http_body(tmp: Any) -> Any:
    from popgate.oauth.http import _Body

    return _Body(b"x")


# (case, the class it builds, the interfaces to verify)
CASES: list[tuple[Case, str, tuple[Any, ...]]] = [
    (_memory_maildrop, "popgate.stores.memory.MemoryMaildrop", (IMaildrop,)),
    (_maildir_maildrop, "popgate.stores.maildir.MaildirMaildrop", (IMaildrop, ISeenMaildrop)),
    (_mailbox_maildrop, "popgate.stores.twistedmailbox.MailboxMaildrop", (IMaildrop, ILoadingMaildrop)),
    (_mbox_maildrop, "popgate.stores.mbox.MboxMaildrop", (IMaildrop,)),
    (_faulty_maildrop, "popgate.testing.faults.FaultyMaildrop", (IMaildrop, ILoadingMaildrop)),
    (_bytes_source, "popgate.stores.sources.BytesSource", (IMessageSource,)),
    (_file_source, "popgate.stores.sources.FileSource", (IMessageSource, ICachedMessageSource)),
    (_mbox_source, "popgate.stores.mboxfile.MessageReader", (IMessageSource, ICachedMessageSource)),
    (_mailbox_source, "popgate.stores.twistedmailbox.BinaryReader", (IMessageSource,)),
    (_dropping_source, "popgate.testing.faults._DroppingSource", (IMessageSource,)),
    (_memory_store, "popgate.stores.memory.MemoryStore", (IMailStore, IDeliveryTarget)),
    (_maildir_store, "popgate.stores.maildir.MaildirStore", (IMailStore, IDeliveryTarget)),
    (_mbox_store, "popgate.stores.mbox.MboxStore", (IMailStore, IDeliveryTarget)),
    (_faulty_store, "popgate.testing.faults.FaultyStore", (IMailStore,)),
    (_pg_store, "popgate.stores.postgresql.PostgresStore", (IMailStore, IDeliveryTarget, IReachable)),
    (_pg_maildrop, "popgate.stores.pg_session.PostgresMaildrop", (IMaildrop,)),
    (_reactor_link, "popgate.stores.pg_reactor.ReactorLink", (IReadDescriptor, IWriteDescriptor)),
    (_chunk_source, "popgate.stores.pg_source.ChunkSource", (IMessageSource, IDeferredMessageSource)),
    (_htpasswd, "popgate.cred.htpasswd.HtpasswdChecker",
     (ICredentialsChecker, IUserLookup, IReachable, IScramLookup)),
    (_passwd_file, "popgate.cred.passwdfile.PasswdFileChecker",
     (ICredentialsChecker, IUserLookup, IReachable, IScramLookup, IPerUserPolicy)),
    (_ldap, "popgate.cred.ldap.LDAPChecker",
     (ICredentialsChecker, IUserLookup, IReachable, IScramLookup, IPerUserPolicy)),
    (_sql, "popgate.cred.sql.SQLChecker",
     (ICredentialsChecker, IUserLookup, IReachable, IScramLookup, IPerUserPolicy)),
    (_memory_checker, "popgate.cred.memory.MemoryChecker",
     (ICredentialsChecker, IUserLookup, IReachable)),
    (_maildir_history, "popgate.stores.history.MaildirLoginHistory", (ILoginHistory,)),
    (_mbox_history, "popgate.stores.history.MboxLoginHistory", (ILoginHistory,)),
    (_retrieval_record, "popgate.stores.history.FileRetrievalRecord", (IRetrievalRecord,)),
    (_pg_login_history, "popgate.stores.pg_history.PostgresLoginHistory", (ILoginHistory,)),
    (_pg_retrieval_record, "popgate.stores.pg_history.PostgresRetrievalRecord",
     (IRetrievalRecord,)),
    (_chain, "popgate.cred.chain.ChainedChecker", (ICredentialsChecker, IScramLookup)),
    (_cache, "popgate.cred.cache.CachingChecker", (ICredentialsChecker, IUserLookup)),
    (_realm, "popgate.realm.MaildropRealm", (IRealm,)),
    (_proxy_store, "popgate.stores.proxy_store.ProxyStore",
     (IMailStore, IAuthenticatingStore, IReachable)),
    (_proxy_maildrop, "popgate.stores.proxy_store.ProxyMaildrop", (IMaildrop, ITopMaildrop)),
    (_imap_store, "popgate.stores.imap_store.ImapStore",
     (IMailStore, IAuthenticatingStore, IReachable)),
    (_imap_maildrop, "popgate.stores.imap_store.ImapMaildrop", (IMaildrop, ITopMaildrop)),
    (_proxy_source, "popgate.stores.proxy_source.UpstreamMessage",
     (IMessageSource, IDeferredMessageSource, IWireMessageSource)),
    (_upstream_checker, "popgate.stores.proxy_auth.UpstreamChecker", (ICredentialsChecker,)),
    (_password_forwarder, "popgate.stores.proxy_auth.PasswordForwarder", (ICredentialsChecker,)),
    (_apop, "popgate.pop3.apop.APOPCredentials", (IUsernameHashedPassword,)),
    (_pop3_protocol, "popgate.pop3.protocol.POP3ServerProtocol",
     (IProtocol, IHalfCloseableProtocol, ILoggingContext)),
    (_output_gate, "popgate.pop3.output.OutputGate", (IPushProducer,)),
    (_watched_endpoint, "popgate.limits.accept_errors._WatchedEndpoint", (IStreamServerEndpoint,)),
    (_message_sender, "popgate.pop3.output.MessageSender", (IPushProducer,)),
    (_cram_md5, "popgate.pop3.sasl.CramMD5Credentials", (IUsernameHashedPassword,)),
    (_scram_credentials, "popgate.pop3.scram.ScramCredentials", (IScramCredentials,)),
    (_server_tls, "popgate.tls.ServerTLS", (IOpenSSLServerConnectionCreator,)),
    (_server_log, "popgate.logs.ServerLog", (ILogObserver,)),
    (_metrics, "popgate.metrics.Metrics", (ILogObserver,)),
    (_oauth_credentials, "popgate.oauth.OAuthCredentials", (IOAuthCredentials,)),
    (_token_checker, "popgate.oauth.TokenChecker", (ICredentialsChecker,)),
    (_jwt_validator, "popgate.oauth.jwt_validator.JWTValidator", (ITokenValidator,)),
    (_introspection_validator, "popgate.oauth.introspect.IntrospectionValidator",
     (ITokenValidator,)),
    (_http_body, "popgate.oauth.http._Body", (IBodyProducer,)),
]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.mark.parametrize(("case", "name", "interfaces"), CASES, ids=[c[1] for c in CASES])
def test_verify_object(case, name, interfaces, tmp_path):
    obj = case(tmp_path)
    assert _qualname(type(obj)) == name
    for interface in interfaces:
        assert verifyObject(interface, obj)


def _popgate_classes() -> dict[str, type]:
    """Every class in popgate that says C{@implementer} itself."""
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(popgate.__path__, "popgate."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and implementedBy(cls).declared:
                found[_qualname(cls)] = cls
    return found


def test_every_implementation_has_a_case():
    tested: dict[type, set[Any]] = {}
    for _, name, interfaces in CASES:
        module, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module), qualname)
        tested[cls] = {base for i in interfaces for base in i.__iro__}
    plugin_classes = {"popgate.plugin_support.LazyCheckerFactory", "popgate.plugin_support.LazyStoreFactory",
                      "popgate.plugin_support.LazyValidatorFactory"}
    missing = []
    for name, cls in _popgate_classes().items():
        if name in plugin_classes:
            continue  # verified as plugin instances below
        declared = set(implementedBy(cls).flattened()) - {Interface}
        # An abstract base counts as tested through a tested subclass.
        seen = set().union(*(t for c, t in tested.items() if issubclass(c, cls)))
        untested = {i.__name__ for i in declared - seen}
        if untested:
            missing.append(f"{name} ({', '.join(sorted(untested))})")
    assert not missing, "add a verifyObject case for: " + "; ".join(missing)


def _store_plugins() -> list[Any]:
    from twisted import plugins

    return list(getPlugins(IMailStoreFactory, plugins))


def test_store_plugins():
    plugins = _store_plugins()
    assert {"maildir", "memory"} <= {p.storeType for p in plugins}
    for plugin in plugins:
        assert verifyObject(IMailStoreFactory, plugin)
        assert verifyObject(IPlugin, plugin)


def test_validator_plugins() -> None:
    from twisted import plugins

    found = list(getPlugins(ITokenValidatorFactory, plugins))
    assert {"jwt", "introspect"} <= {p.validatorType for p in found}
    for plugin in found:
        assert verifyObject(ITokenValidatorFactory, plugin)
        assert verifyObject(IPlugin, plugin)


@pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")
def test_checker_plugins():
    from twisted.plugins import popgate_plugin

    ours = [v for v in vars(popgate_plugin).values() if ICheckerFactory.providedBy(v)]
    assert {"htpasswd", "passwd-file", "ldap", "sql"} <= {p.authType for p in ours}
    found = list(findCheckerFactories())
    for plugin in ours:
        assert verifyObject(ICheckerFactory, plugin)
        assert verifyObject(IPlugin, plugin)
        assert plugin in found


def test_store_plugins_make_stores(tmp_path):
    by_type = {p.storeType: p for p in _store_plugins()}
    reactor = InlineReactor()
    assert verifyObject(IMailStore, by_type["memory"].makeStore("", reactor))
    maildir = by_type["maildir"].makeStore(str(tmp_path / "%n"), reactor)
    assert verifyObject(IMailStore, maildir)
    assert maildir._reactor is reactor  # its threads are the server's
