"""
A real LDAP directory for the LDAP checker's tests.

By default a throwaway slapd runs in a temp dir on a free 127.0.0.1 port
(plain, StartTLS and ldaps with a CA made here), loaded offline with
C{slapadd}.  With C{POPGATE_LDAP_URL} (and C{POPGATE_LDAP_BASE},
C{POPGATE_LDAP_BINDDN}, C{POPGATE_LDAP_BINDPW} naming an account that may
write under the base) the test entries go into a fresh C{ou} of that
directory instead, with C{ldapadd}, and are deleted afterwards.

Fixtures: C{ldap_server} (session; external or local), C{local_slapd}
(session; always ours, with TLS) and C{private_slapd} (one test's own, which
it may stop and start).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import ServerProcess, accepts, free_port
from tests.services import need_program

SUFFIX = "dc=example,dc=org"
SERVICE_PASSWORD = "service-secret"

# name -> password, and how the password is stored
USERS = {
    "alice": ("alice-pw", "ssha"),
    "bob": ("bob-pw", "crypt"),
    "carol": ("carol-pw", "clear"),
    "erin": ("erin-pw", "clear"),
    "o(k)*": ("special-pw", "clear"),
    "jos\u00e9": ("jose-pw", "ssha"),
}
TWIN_PASSWORD = "twin-pw"
# Stored in mixed case (uid Dana, mail Dana@Example.org): logins and
# recipients in any case must get the directory's spelling.
MIXED_CASE_USER = ("Dana", "dana-pw", "Dana@Example.org")
ERIN_MAIL_LOCATION = "/srv/mail/erin/Maildir"
#: The attribute holding users' upstream URLs (--route): alice's and bob's
#: name POP3 servers on the directory's C{route_ports}, carol's an IMAP one.
ROUTE_ATTRIBUTE = "labeledURI"


def _routes(ports: tuple[int, int]) -> dict[str, str]:
    return {"alice": f"pop3://127.0.0.1:{ports[0]}", "bob": f"pop3://127.0.0.1:{ports[1]}",
            "carol": f"imaps://127.0.0.1:{ports[0]}"}

# A private OID arc: only the tests' own slapd loads this schema.
_MAIL_SCHEMA = """\
attributetype ( 1.3.6.1.4.1.99999.4242.1.1 NAME 'mailMessageStore'
    DESC 'where the user mail lives (as qmail-ldap names it)'
    EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.99999.4242.2.1 NAME 'popgateMailUser'
    SUP top AUXILIARY MAY ( mailMessageStore ) )
"""

_SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include {dir}/mail.schema
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {dir}/ca.pem
TLSCertificateFile {dir}/server.pem
TLSCertificateKeyFile {dir}/server.key
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
rootpw {rootpw}
directory {dir}/db
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to *
    by * read
"""


def _sbin(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def _ssha(password: str) -> str:
    """{SSHA} from slappasswd when present (that is what admins paste), else computed."""
    slappasswd = _sbin("slappasswd")
    if slappasswd:
        out = subprocess.run([slappasswd, "-h", "{SSHA}", "-s", password], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _crypt(password: str) -> str:
    from passlib.hash import sha512_crypt

    return "{CRYPT}" + sha512_crypt.hash(password)


def _stored(password: str, scheme: str) -> str:
    return {"ssha": _ssha, "crypt": _crypt, "clear": lambda p: p}[scheme](password)


def _line(attribute: str, value: str) -> str:
    if value.isascii() and not value.startswith((" ", ":", "<")):
        return f"{attribute}: {value}"
    return f"{attribute}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}"


def _entry(dn: str, *pairs: tuple[str, str]) -> str:
    return "\n".join([_line("dn", dn), *(_line(a, v) for a, v in pairs)]) + "\n"


def _person(name: str, ou: str, base: str, password: str, extra: tuple[tuple[str, str], ...] = ()) -> str:
    # mail is IA5 (ASCII) in the schema; uid and cn take UTF-8.
    mail = (("mail", f"{name}@example.org"),) if name.isascii() else ()
    return _entry(
        f"uid={name},ou={ou},{base}",
        ("objectClass", "inetOrgPerson"),
        *extra,
        ("uid", name),
        ("cn", name),
        ("sn", name),
        *mail,
        ("userPassword", password),
    )


def make_ldif(base: str, top: list[str], mail_attribute: str, service_dn: str | None,
              routes: dict[str, str] | None = None) -> str:
    """The test entries under C{base}; C{top} is the base entry itself;
    C{routes}, the L{ROUTE_ATTRIBUTE} of some users."""
    entries = [_entry(base, *((line.split(": ", 1)[0], line.split(": ", 1)[1]) for line in top))]
    for ou in ("people", "others", "services"):
        entries.append(_entry(f"ou={ou},{base}", ("objectClass", "organizationalUnit"), ("ou", ou)))
    if service_dn is not None:
        entries.append(
            _entry(
                service_dn,
                ("objectClass", "organizationalRole"),
                ("objectClass", "simpleSecurityObject"),
                ("cn", "popgate"),
                ("userPassword", _ssha(SERVICE_PASSWORD)),
            )
        )
    for name, (password, scheme) in USERS.items():
        extra: tuple[tuple[str, str], ...] = ()
        if name == "erin":
            if mail_attribute == "mailMessageStore":
                extra = (("objectClass", "popgateMailUser"), ("mailMessageStore", ERIN_MAIL_LOCATION))
            else:
                extra = ((mail_attribute, ERIN_MAIL_LOCATION),)
        if name in (routes or {}):
            extra += ((ROUTE_ATTRIBUTE, (routes or {})[name]),)
        entries.append(_person(name, "people", base, _stored(password, scheme), extra))
    name, password, mail = MIXED_CASE_USER
    entries.append(
        _entry(
            f"uid={name},ou=people,{base}",
            ("objectClass", "inetOrgPerson"),
            ("uid", name),
            ("cn", name),
            ("sn", name),
            ("mail", mail),
            ("userPassword", password),
        )
    )
    # The same uid twice: a search for it is ambiguous.
    entries.append(_person("twin", "people", base, TWIN_PASSWORD))
    entries.append(_person("twin", "others", base, TWIN_PASSWORD))
    # An entry without a password: binding as it must fail.
    entries.append(
        _entry(
            f"uid=nopw,ou=people,{base}",
            ("objectClass", "inetOrgPerson"),
            ("uid", "nopw"),
            ("cn", "nopw"),
            ("sn", "nopw"),
        )
    )
    return "\n".join(entries)


def _write_tls_files(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 / localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "popgate test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(server.public_bytes(pem))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)


class SlapdProcess(ServerProcess):
    """Our slapd in the foreground (C{-d 0}), ready once it accepts on C{port}."""

    name = "slapd"
    start_timeout = 15.0

    def __init__(self, command: list[str], port: int, log_path: Path) -> None:
        super().__init__(command, log_path=log_path)
        self.port = port

    def ready(self) -> bool:
        return accepts(self.port)


@dataclass
class LDAPServer:
    """A directory holding the test users; C{local} ones can stop and start."""

    url: str
    base: str
    binddn: str
    bindpw: str
    mail_attribute: str
    #: Where the users' routes (L{ROUTE_ATTRIBUTE}) say alice's and bob's
    #: upstreams listen.
    route_ports: tuple[int, int] = (0, 0)
    ldaps_url: str | None = None
    cafile: str | None = None
    local: bool = False
    _slapd: list[str] = field(default_factory=list, repr=False)
    _process: SlapdProcess | None = field(default=None, repr=False)
    _ports: tuple[int, int] = (0, 0)
    _log: Path | None = field(default=None, repr=False)

    def argstring(self, **options: str) -> str:
        """An C{ldap:} argument string for this server; C{options} add or override."""
        args = {"url": self.url, "base": self.base, "binddn": self.binddn, "bindpw": self.bindpw}
        args.update(options)
        return ",".join(f"{k}={v}" for k, v in args.items() if v is not None)

    def start(self) -> None:
        """Start (or restart, on the same ports) the local slapd."""
        assert self.local and self._process is None and self._log is not None
        plain, tls = self._ports
        urls = f"ldap://127.0.0.1:{plain}/ ldaps://127.0.0.1:{tls}/"
        self._process = SlapdProcess([*self._slapd, "-h", urls, "-d", "0"], plain, self._log)
        try:
            self._process.start()
        except BaseException:
            self._process = None
            raise

    def stop(self) -> None:
        """Stop the local slapd, waiting until it has gone."""
        process, self._process = self._process, None
        if process is not None:
            process.stop()


def _local_server(directory: Path) -> LDAPServer:
    slapd = _sbin("slapd") or need_program("slapd", "slapd")
    slapadd = _sbin("slapadd") or need_program("slapadd", "slapd")
    (directory / "db").mkdir()
    (directory / "mail.schema").write_text(_MAIL_SCHEMA)
    _write_tls_files(directory)
    conf = directory / "slapd.conf"
    conf.write_text(_SLAPD_CONF.format(dir=directory, suffix=SUFFIX, rootpw=secrets.token_hex(16)))
    service_dn = f"cn=popgate,ou=services,{SUFFIX}"
    ldif = directory / "users.ldif"
    top = ["objectClass: dcObject", "objectClass: organization", "dc: example", "o: Example"]
    route_ports = (free_port(), free_port())
    ldif.write_text(make_ldif(SUFFIX, top, "mailMessageStore", service_dn, _routes(route_ports)),
                    encoding="utf-8")
    _checked([slapadd, "-f", str(conf), "-l", str(ldif)])
    plain, tls = free_port(), free_port()
    server = LDAPServer(
        url=f"ldap://127.0.0.1:{plain}/",
        ldaps_url=f"ldaps://127.0.0.1:{tls}/",
        base=SUFFIX,
        binddn=service_dn,
        bindpw=SERVICE_PASSWORD,
        mail_attribute="mailMessageStore",
        route_ports=route_ports,
        cafile=str(directory / "ca.pem"),
        local=True,
        _slapd=[slapd, "-f", str(conf)],
        _ports=(plain, tls),
        _log=directory / "slapd.log",
    )
    server.start()
    return server


def _checked(command: list[str], stdin: str | None = None) -> None:
    """Run C{command}; on failure say what it printed."""
    done = subprocess.run(command, input=stdin, capture_output=True, encoding="utf-8")
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} exited with {done.returncode}: {done.stderr.strip()}")


def _ldap_tool(name: str, env_url: str, binddn: str, bindpw: str, *args: str, stdin: str | None = None) -> None:
    tool = need_program(name, "ldap-utils")
    _checked([tool, "-x", "-H", env_url, "-D", binddn, "-w", bindpw, *args], stdin)


@dataclass
class _External:
    url: str
    binddn: str
    bindpw: str
    base: str


def _external_server(url: str) -> tuple[LDAPServer, _External]:
    ext = _External(
        url=url,
        binddn=os.environ.get("POPGATE_LDAP_BINDDN", ""),
        bindpw=os.environ.get("POPGATE_LDAP_BINDPW", ""),
        base=os.environ.get("POPGATE_LDAP_BASE", ""),
    )
    if not (ext.binddn and ext.bindpw and ext.base):
        pytest.fail("POPGATE_LDAP_URL needs POPGATE_LDAP_BASE, POPGATE_LDAP_BINDDN and POPGATE_LDAP_BINDPW")
    ou = f"popgate-test-{secrets.token_hex(4)}"
    base = f"ou={ou},{ext.base}"
    route_ports = (free_port(), free_port())
    ldif = make_ldif(base, ["objectClass: organizationalUnit", f"ou: {ou}"], "description", None,
                     _routes(route_ports))
    try:
        _ldap_tool("ldapadd", url, ext.binddn, ext.bindpw, stdin=ldif)
    except Exception:
        with contextlib.suppress(Exception):
            _ldap_tool("ldapdelete", url, ext.binddn, ext.bindpw, "-r", base)
        raise
    server = LDAPServer(url=url, base=base, binddn=ext.binddn, bindpw=ext.bindpw, mail_attribute="description",
                        route_ports=route_ports)
    return server, ext


@pytest.fixture(scope="session")
def local_slapd() -> Iterator[LDAPServer]:
    """A throwaway slapd for the whole session (TLS tests need one of ours)."""
    with tempfile.TemporaryDirectory(prefix="popgate-slapd-") as tmp:
        server = _local_server(Path(tmp))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def ldap_server(request: pytest.FixtureRequest) -> Iterator[LDAPServer]:
    """The shared test directory: external when POPGATE_LDAP_URL says so."""
    url = os.environ.get("POPGATE_LDAP_URL")
    if not url:
        yield request.getfixturevalue("local_slapd")
        return
    server, ext = _external_server(url)
    try:
        yield server
    finally:
        _ldap_tool("ldapdelete", url, ext.binddn, ext.bindpw, "-r", server.base)


@pytest.fixture
def private_slapd() -> Iterator[LDAPServer]:
    """A slapd of the test's own, which it may stop and start."""
    with tempfile.TemporaryDirectory(prefix="popgate-slapd-") as tmp:
        server = _local_server(Path(tmp))
        try:
            yield server
        finally:
            server.stop()
