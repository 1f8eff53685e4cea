"""
C{--metrics}: the observer counting L{popgate.events} into its own
registry, the live gauges, C{/metrics} over HTTP, the per-worker
endpoints, the Grafana dashboard; then the real server (twistd, poplib,
urllib) before and after logins, a RETR and a DELE, with TLS, and with
C{--workers}.
"""

from __future__ import annotations

import json
import poplib
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogPublisher, globalLogPublisher
from twisted.python import usage

from popgate import events, tap
from popgate.build import build_server
from popgate.cred.schemes import hash_password
from popgate.limits import process as limits_process
from popgate.metrics import Metrics
from popgate.metrics_web import MetricsService, metrics_site, worker_endpoint
from popgate.workers.pool import WorkerPool
from tests.popgate_server import REPO, PopgateProcess, free_port
from tests.tlscerts import PKI, make_pki

pytestmark = pytest.mark.filterwarnings("ignore:.*spwd.*:DeprecationWarning")

DASHBOARD = Path(REPO) / "etc" / "grafana" / "popgate.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(metrics: Metrics) -> Samples:
    from prometheus_client import generate_latest
    return parse(generate_latest(metrics.registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series not there yet (a label set never seen)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def sample_fields(name: str, **given: Any) -> dict[str, Any]:
    """Every field of event C{name}, a plausible value for each, C{given} over them."""
    fields: dict[str, Any] = {}
    for f in events.CATALOGUE[name].fields:
        if f.type == "int":
            fields[f.name] = 0
        elif f.type == "float":
            fields[f.name] = 0.0
        elif f.type == "address":
            fields[f.name] = "192.0.2.1"
        elif f.values:
            fields[f.name] = f.values[0]
        else:
            fields[f.name] = "x"
    if "tls" in fields:
        fields["tls"] = "no"
    fields.update(given)
    return fields


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process=False)


def emit(metrics: Metrics, name: str, **given: Any) -> None:
    events.emit(Logger(observer=metrics), name, **sample_fields(name, **given))


# -- the observer


def test_every_event_of_the_catalogue_is_counted(metrics: Metrics) -> None:
    # A new event in popgate/events.py needs its metric here too.
    assert set(metrics._handlers) == set(events.CATALOGUE)


def test_a_login_counts_by_result_method_and_reason_and_times_it(metrics: Metrics) -> None:
    emit(metrics, "pop3.login", result="failed", reason="bad-password", method="USER",
         wait=2.0, duration=2.3)
    emit(metrics, "pop3.login", result="ok", reason="", method="CRAM-MD5", duration=0.02)
    emit(metrics, "pop3.login", result="error", reason="userstore", method="PLAIN",
         duration=1.5)
    s = scrape(metrics)
    assert value(s, "popgate_logins_total", result="failed", method="USER",
                 reason="bad-password") == 1
    assert value(s, "popgate_logins_total", result="ok", method="CRAM-MD5", reason="") == 1
    assert value(s, "popgate_logins_total", result="error", method="PLAIN",
                 reason="userstore") == 1
    # The whole attempt, penalty wait included, and the check alone.
    assert value(s, "popgate_login_duration_seconds_sum", result="failed") == pytest.approx(2.3)
    assert value(s, "popgate_login_check_seconds_sum", result="failed") == pytest.approx(0.3)
    assert value(s, "popgate_login_duration_seconds_bucket", result="failed", le="2.5") == 1
    assert value(s, "popgate_login_duration_seconds_bucket", result="failed", le="1.0") == 0
    assert value(s, "popgate_login_duration_seconds_count", result="ok") == 1


def test_labels_never_take_what_a_client_sent(metrics: Metrics) -> None:
    # User names and addresses are no labels; a method the server does
    # not name is "other".
    emit(metrics, "pop3.login", result="failed", reason="bad-password", method="x y<z>",
         user="mallory", rip="203.0.113.9")
    text = "\n".join(f"{n} {sorted(labels)}" for n, labels in scrape(metrics))
    assert "mallory" not in text and "203.0.113.9" not in text
    assert value(scrape(metrics), "popgate_logins_total", result="failed", method="other",
                 reason="bad-password") == 1


def test_a_session_counts_what_it_retrieved_and_deleted_when_it_ends(metrics: Metrics) -> None:
    emit(metrics, "pop3.logout", reason="quit", retr=3, retr_bytes=3000, top=2, top_bytes=200,
         deleted=2, deleted_bytes=1900)
    emit(metrics, "pop3.logout", reason="idle-timeout", retr=1, retr_bytes=10)
    emit(metrics, "pop3.disconnect", reason="too-many-failures")
    s = scrape(metrics)
    assert value(s, "popgate_sessions_total", reason="quit") == 1
    assert value(s, "popgate_sessions_total", reason="idle-timeout") == 1
    assert value(s, "popgate_pop3_disconnects_total", reason="too-many-failures") == 1
    assert value(s, "popgate_messages_retrieved_total", command="retr") == 4
    assert value(s, "popgate_retrieved_bytes_total", command="retr") == 3010
    assert value(s, "popgate_messages_retrieved_total", command="top") == 2
    assert value(s, "popgate_retrieved_bytes_total", command="top") == 200
    assert value(s, "popgate_messages_deleted_total") == 2
    assert value(s, "popgate_deleted_bytes_total") == 1900


def test_deliveries_connections_and_errors(metrics: Metrics) -> None:
    emit(metrics, "lmtp.delivery", result="ok", reason="", size=1234, duration=0.04,
         code=250, status="2.0.0")
    emit(metrics, "lmtp.delivery", result="failed", reason="unknown-user", size=0,
         code=550, status="5.1.1")
    emit(metrics, "deliver.delivery", result="tempfail", reason="disk-full", size=99)
    emit(metrics, "pop3.connect", tls="no")
    emit(metrics, "pop3.connect", tls="yes")
    emit(metrics, "limit.refused", limit="address", protocol="pop3")
    emit(metrics, "auth.penalty", repeated="no")
    emit(metrics, "tls.handshake", stage="stls", version="TLSv1.3")
    emit(metrics, "tls.handshake", stage="pop3s", version="TLS 9<>")
    emit(metrics, "tls.handshake_failed", stage="pop3s")
    emit(metrics, "store.error", op="commit", kind="temporary")
    emit(metrics, "userstore.error", op="login", kind="permanent")
    s = scrape(metrics)
    assert value(s, "popgate_deliveries_total", protocol="lmtp", result="ok", reason="") == 1
    assert value(s, "popgate_deliveries_total", protocol="lmtp", result="failed",
                 reason="unknown-user") == 1
    assert value(s, "popgate_deliveries_total", protocol="deliver", result="tempfail",
                 reason="disk-full") == 1
    assert value(s, "popgate_delivered_bytes_total", protocol="lmtp") == 1234  # ok only
    assert value(s, "popgate_delivered_bytes_total", protocol="deliver") == 0
    assert value(s, "popgate_delivery_duration_seconds_count", protocol="lmtp") == 2
    assert value(s, "popgate_pop3_connections_total", listener="pop3") == 1
    assert value(s, "popgate_pop3_connections_total", listener="pop3s") == 1
    assert value(s, "popgate_connections_refused_total", limit="address", protocol="pop3") == 1
    assert value(s, "popgate_connections_refused_total", limit="total", protocol="lmtp") == 0
    assert value(s, "popgate_auth_penalties_total", repeated="no") == 1
    assert value(s, "popgate_tls_handshakes_total", stage="stls", version="TLSv1.3") == 1
    assert value(s, "popgate_tls_handshakes_total", stage="pop3s", version="other") == 1
    assert value(s, "popgate_tls_handshake_failures_total", stage="pop3s") == 1
    assert value(s, "popgate_store_errors_total", op="commit", kind="temporary") == 1
    assert value(s, "popgate_userstore_errors_total", op="login", kind="permanent") == 1


def test_other_lines_and_broken_events_are_ignored_without_raising(metrics: Metrics) -> None:
    before = scrape(metrics)
    metrics({"log_format": "hello"})
    metrics({"event": "pop3.login", "result": "ok"})  # fields missing
    metrics({"event": "pop3.logout", "reason": "quit", "retr": "many"})
    metrics({"event": 3})
    assert scrape(metrics) == before


def test_series_with_few_label_values_start_at_zero(metrics: Metrics) -> None:
    s = scrape(metrics)
    assert (("popgate_tls_handshake_failures_total", frozenset({("stage", "stls")}))) in s
    assert value(s, "popgate_messages_deleted_total") == 0 and (
        "popgate_messages_deleted_total", frozenset()) in s
    assert not [name for name, _ in s if name.endswith("_created")]


def test_registries_are_separate_and_never_the_global_one() -> None:
    from prometheus_client import REGISTRY
    one, two = Metrics(process=False), Metrics(process=False)
    emit(one, "pop3.connect")
    assert value(scrape(one), "popgate_pop3_connections_total", listener="pop3") == 1
    assert value(scrape(two), "popgate_pop3_connections_total", listener="pop3") == 0
    assert REGISTRY.get_sample_value("popgate_pop3_connections_total",
                                     {"listener": "pop3"}) is None


def test_the_process_figures_are_there_when_asked_for() -> None:
    s = scrape(Metrics())
    assert value(s, "process_open_fds") > 0
    assert value(s, "popgate_build_info", version=__import__("popgate").__version__) == 1


# -- the service, the gauges, /metrics, in memory


class FakeCounts:
    total = 7
    max_connections = 100


def test_the_service_counts_only_while_it_runs() -> None:
    publisher = LogPublisher()
    metrics = Metrics(process=False)
    served = MetricsService(metrics, publisher=publisher)
    log = Logger(observer=publisher)
    events.emit(log, "pop3.connect", **sample_fields("pop3.connect"))
    served.startService()
    events.emit(log, "pop3.connect", **sample_fields("pop3.connect"))
    served.stopService()
    events.emit(log, "pop3.connect", **sample_fields("pop3.connect"))
    assert value(scrape(metrics), "popgate_pop3_connections_total", listener="pop3") == 1


def http_get(site: Any, path: bytes, accept: bytes = b"") -> tuple[bytes, bytes]:
    """One request to C{site} over a StringTransport: (head, body)."""
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    headers = b"Accept: " + accept + b"\r\n" if accept else b""
    protocol.dataReceived(b"GET " + path + b" HTTP/1.0\r\n" + headers + b"\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    protocol.connectionLost(None)
    return head, body


def test_metrics_resource_serves_the_text_format_and_nothing_else() -> None:
    metrics = Metrics(connections=FakeCounts(), sessions=lambda: 3, process=False)
    emit(metrics, "pop3.connect")
    site = metrics_site(metrics.registry, MemoryReactorClock())
    head, body = http_get(site, b"/metrics")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"content-type: text/plain; version=0.0.4; charset=utf-8" in head.lower()
    s = parse(body.decode())
    assert value(s, "popgate_connections_open") == 7
    assert value(s, "popgate_connections_max") == 100
    assert value(s, "popgate_sessions_open") == 3
    assert value(s, "popgate_pop3_connections_total", listener="pop3") == 1
    head, body = http_get(site, b"/metrics", accept=b"application/openmetrics-text")
    assert b"application/openmetrics-text" in head and body.endswith(b"# EOF\n")
    assert http_get(site, b"/")[0].startswith(b"HTTP/1.0 404")
    assert http_get(site, b"/metrics/x")[0].startswith(b"HTTP/1.0 200")  # a leaf


@pytest.fixture
def no_descriptor_limit_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_process, "raise_nofile_limit", lambda: (1024, 1024))


def config(args: list[str]) -> Any:
    options = tap.Options()
    options.parseOptions(args)
    return options.config


def test_built_server_counts_its_sessions_and_connections(
        no_descriptor_limit_change: None) -> None:
    """build_server with --metrics, on a memory reactor: a POP3 login moves
    the live gauges and the counters, read over the metrics listener."""
    reactor = MemoryReactorClock()
    server = build_server(config(["--store", "memory:", "--auth", "memory:alice:secret",
                                  "--pop3", "tcp:1110:interface=127.0.0.1",
                                  "--metrics", "tcp:9110:interface=127.0.0.1"]), reactor)
    assert "metrics tcp:9110:interface=127.0.0.1" in [s.name for s in server]
    server.privilegedStartService()
    server.startService()
    try:
        by_port = {port: factory for port, factory, _, _ in reactor.tcpServers}
        site, pop3 = by_port[9110], by_port[1110]

        def scraped() -> Samples:
            return parse(http_get(site, b"/metrics")[1].decode())

        assert value(scraped(), "popgate_sessions_open") == 0
        client = pop3.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        client.makeConnection(transport)
        client.dataReceived(b"USER alice\r\nPASS secret\r\n")
        reactor.advance(0)
        assert b"+OK Logged in." in transport.value()
        s = scraped()
        assert value(s, "popgate_connections_open") == 1
        assert value(s, "popgate_sessions_open") == 1
        assert value(s, "popgate_logins_total", result="ok", method="USER", reason="") == 1
        assert value(s, "popgate_pop3_connections_total", listener="pop3") == 1
        client.dataReceived(b"QUIT\r\n")
        reactor.advance(0)
        client.connectionLost(None)
        s = scraped()
        assert value(s, "popgate_connections_open") == 0
        assert value(s, "popgate_sessions_open") == 0
        assert value(s, "popgate_sessions_total", reason="quit") == 1
    finally:
        server.stopService()
    assert server.metrics is not None
    assert server.metrics.metrics not in globalLogPublisher._observers


def test_without_the_option_nothing_observes(no_descriptor_limit_change: None) -> None:
    server = build_server(config(["--store", "memory:", "--auth", "memory:a:b"]),
                          MemoryReactorClock())
    assert server.metrics is None
    assert not [s for s in server if s.name and s.name.startswith("metrics")]


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics", "bogus:1"], "--metrics bogus:1: Unknown endpoint type"),
    (["--metrics", "systemd:domain=INET:index=0", "--workers", "2"],
     "--metrics with --workers needs a tcp:, tcp6: or unix: endpoint"),
])
def test_a_bad_endpoint_is_one_usage_line(args: list[str], message: str,
                                          no_descriptor_limit_change: None) -> None:
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        build_server(config(["--store", "memory:", "--auth", "memory:a:b", *args]),
                     MemoryReactorClock())


@pytest.mark.parametrize(("description", "number", "expected"), [
    ("tcp:9110:interface=127.0.0.1", 0, "tcp:9110:interface=127.0.0.1"),
    ("tcp:9110:interface=127.0.0.1", 3, "tcp:9113:interface=127.0.0.1"),
    ("tcp:interface=127.0.0.1:port=9110", 1, "tcp:interface=127.0.0.1:port=9111"),
    ("tcp6:9110:interface=\\:\\:1", 2, "tcp6:9112:interface=\\:\\:1"),
    ("tcp:0", 2, "tcp:0"),
    ("unix:/run/popgate/metrics.sock", 2, "unix:/run/popgate/metrics.sock.2"),
    ("unix:address=/run/m:mode=660", 1, "unix:address=/run/m.1:mode=660"),
])
def test_each_worker_has_its_own_endpoint(description: str, number: int, expected: str) -> None:
    assert worker_endpoint(description, number) == expected


@pytest.mark.parametrize(("description", "message"), [
    ("systemd:domain=INET:index=0", "needs a tcp:, tcp6: or unix: endpoint"),
    ("tcp:interface=127.0.0.1", "no port"),
    ("tcp:http", "bad port"),
])
def test_a_worker_endpoint_that_cannot_be_numbered_is_refused(description: str,
                                                               message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        worker_endpoint(description, 1)


def test_workers_are_told_their_number() -> None:
    spawned: list[list[str]] = []

    class Reactor:
        def spawnProcess(self, protocol: Any, executable: str, argv: list[str],
                         **kw: Any) -> Any:
            spawned.append(argv)
            return object()

    WorkerPool(Reactor(), 3, ["--workers", "3"]).startService()
    assert [argv[-2:] for argv in spawned] == [["--worker-number", "1"],
                                               ["--worker-number", "2"]]
    assert config(["--store", "memory:", "--auth", "memory:a:b", "--workers", "3",
                   "--worker-number", "2", "--worker"]).worker_number == 2


def test_the_setting_is_an_option_and_a_toml_key(tmp_path: Path) -> None:
    toml = tmp_path / "popgate.toml"
    toml.write_text('[popgate]\nstore = "memory:"\nauth = ["memory:a:b"]\n'
                    'metrics = "tcp:9110:interface=127.0.0.1"\n')
    assert config(["--config", str(toml)]).metrics == "tcp:9110:interface=127.0.0.1"
    assert config(["--config", str(toml), "--metrics", "unix:/m"]).metrics == "unix:/m"


# -- the Grafana dashboard


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p["targets"]] + [
        v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]


def exported_names(metrics: Metrics) -> set[str]:
    """Every sample name the registry can export, labels or not."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                "gauge": [""]}
    return {family.name + suffix for family in metrics.registry.collect()
            for suffix in suffixes.get(family.type, [""])}


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    used = {name for q in queries for name in re.findall(r"\bpopgate_[a-z0-9_]+", q)}
    names = exported_names(Metrics(connections=FakeCounts(), sessions=lambda: 0,
                                   process=False))
    assert used and used <= names, used - names
    # The panels the dashboard is for.
    for wanted in ("popgate_logins_total", "popgate_sessions_open",
                   "popgate_login_duration_seconds_bucket", "popgate_retrieved_bytes_total",
                   "popgate_deliveries_total"):
        assert wanted in used


def test_the_dashboard_panels_are_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["title"] and panel["targets"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


# -- the real server


def get_metrics(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.headers["Content-Type"], parse(response.read().decode())


def wait_for_metrics(port: int, timeout: float = 30) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_metrics(port)[1]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


MESSAGE = b"Subject: metrics\n\nhello\nworld\n"


@pytest.fixture
def mail(tmp_path: Path) -> Path:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hash_password('pw', rounds=4, prefix=False)}\n")
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "mail" / "alice" / sub).mkdir(parents=True)
    for i in range(2):
        (tmp_path / "mail" / "alice" / "new" / f"170000000{i}.M{i}P1.test").write_bytes(MESSAGE)
    return tmp_path


def server_args(mail: Path, *more: str) -> list[str]:
    return ["--auth", f"htpasswd:{mail / 'htpasswd'}", "--store", f"maildir:{mail}/mail/%n",
            "--auth-failure-delay", "0", *more]


@pytest.mark.integration
def test_real_server_counts_logins_retrieval_and_deletion(mail: Path) -> None:
    port = free_port()
    with PopgateProcess(server_args(mail, "--metrics", f"tcp:{port}:interface=127.0.0.1"),
                        log_path=str(mail / "log")) as server:
        content_type, before = get_metrics(port)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"

        bad = poplib.POP3("127.0.0.1", server.port, timeout=20)
        bad.user("alice")
        with pytest.raises(poplib.error_proto, match="AUTH"):
            bad.pass_("wrong")
        bad.quit()

        good = poplib.POP3("127.0.0.1", server.port, timeout=30)
        good.user("alice")
        good.pass_("pw")  # waits the penalty the failure earned
        response, lines, _ = good.retr(1)
        on_wire = len(response) + 2 + sum(len(line) + 2 for line in lines) + 3
        size = len(MESSAGE.replace(b"\n", b"\r\n"))
        good.dele(2)
        during = get_metrics(port)[1]
        good.quit()
        after = get_metrics(port)[1]

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # While the session was open.
    assert value(during, "popgate_sessions_open") == 1
    assert value(during, "popgate_connections_open") == 1
    assert value(before, "popgate_sessions_open") == value(after, "popgate_sessions_open") == 0
    assert value(after, "popgate_connections_open") == 0
    # Exactly what happened, no more.
    assert moved("popgate_pop3_connections_total", listener="pop3") == 2
    assert moved("popgate_logins_total", result="failed", method="USER",
                 reason="bad-password") == 1
    assert moved("popgate_logins_total", result="ok", method="USER", reason="") == 1
    logins = [k for k in after if k[0] == "popgate_logins_total"]
    assert sum(value(after, *k[:1], **dict(k[1])) for k in logins) == 2
    assert moved("popgate_login_duration_seconds_count", result="ok") == 1
    assert moved("popgate_login_duration_seconds_count", result="failed") == 1
    # The good login waited for the penalty the bad one earned (about 2 s);
    # the check itself is quick.
    assert moved("popgate_login_duration_seconds_sum", result="ok") > 0.5
    assert moved("popgate_login_check_seconds_sum", result="ok") < 0.5
    assert moved("popgate_auth_penalties_total", repeated="no") == 1
    assert moved("popgate_pop3_disconnects_total", reason="quit") == 1
    assert moved("popgate_sessions_total", reason="quit") == 1
    assert moved("popgate_messages_retrieved_total", command="retr") == 1
    assert moved("popgate_retrieved_bytes_total", command="retr") == on_wire
    assert moved("popgate_messages_retrieved_total", command="top") == 0
    assert moved("popgate_messages_deleted_total") == 1
    assert moved("popgate_deleted_bytes_total") == size
    assert not [k for k in after if k[0] in ("popgate_store_errors_total",
                                             "popgate_userstore_errors_total") and after[k]]
    assert len(list((mail / "mail" / "alice").glob("*/*"))) == 1  # the DELE applied


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.integration
def test_real_server_counts_tls_handshakes(mail: Path, pki: PKI) -> None:
    port = free_port()
    args = server_args(mail, "--metrics", f"tcp:{port}:interface=127.0.0.1",
                       "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    with PopgateProcess(args, log_path=str(mail / "log"), pop3s=True) as server:
        assert server.pop3s_port is not None
        before = get_metrics(port)[1]
        context = ssl.create_default_context(cafile=str(pki.ca))
        implicit = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, context=context, timeout=20)
        version = implicit.sock.version()
        implicit.user("alice")
        implicit.pass_("pw")
        implicit.quit()
        upgraded = poplib.POP3("127.0.0.1", server.port, timeout=20)
        upgraded.stls(context)
        upgraded.capa()
        upgraded.quit()
        with socket.create_connection(("127.0.0.1", server.pop3s_port), timeout=10) as junk:
            junk.sendall(b"this is no TLS client hello\r\n" * 4)
            try:
                while junk.recv(4096):
                    pass
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while True:
            after = get_metrics(port)[1]
            failed = value(after, "popgate_tls_handshake_failures_total", stage="pop3s") - value(
                before, "popgate_tls_handshake_failures_total", stage="pop3s")
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert version in ("TLSv1.2", "TLSv1.3")
    for stage in ("pop3s", "stls"):
        assert value(after, "popgate_tls_handshakes_total", stage=stage, version=version) - value(
            before, "popgate_tls_handshakes_total", stage=stage, version=version) == 1
    assert failed == 1
    assert value(after, "popgate_pop3_connections_total", listener="pop3s") - value(
        before, "popgate_pop3_connections_total", listener="pop3s") == 2


def greet_and_quit(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        reader = s.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        s.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"+OK")


def all_workers(ports: list[int]) -> Iterator[Samples]:
    for port in ports:
        yield get_metrics(port)[1]


@pytest.mark.integration
def test_with_workers_each_process_serves_its_own_and_the_sum_is_exact(mail: Path) -> None:
    port = free_port()
    while True:  # the worker's port too
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            break
        except OSError:
            port = free_port()
    args = server_args(mail, "--workers", "2", "--metrics", f"tcp:{port}:interface=127.0.0.1")
    with PopgateProcess(args, log_path=str(mail / "log")) as server:
        ports = [port, port + 1]
        for p in ports:
            wait_for_metrics(p)
        # The worker shares the POP3 port once its reactor runs; till then
        # the parent takes every connection, which the sum counts all the same.
        before = sum(value(s, "popgate_pop3_connections_total", listener="pop3")
                     for s in all_workers(ports))
        for _ in range(12):
            greet_and_quit(server.port)
        each = [value(s, "popgate_pop3_connections_total", listener="pop3")
                for s in all_workers(ports)]
        owners = [listening_pid(p) for p in ports]
        parent = server.process.pid
    assert sum(each) - before == 12, each
    # The first port is the parent's, the next its worker's.
    assert owners[0] == parent and owners[1] not in (None, parent), (owners, parent)


def listening_pid(port: int) -> int | None:
    out = subprocess.run(["ss", "-tlnpH", f"sport = :{port}"], capture_output=True,
                         text=True).stdout
    found = re.search(r"pid=(\d+),", out)
    return int(found.group(1)) if found else None
