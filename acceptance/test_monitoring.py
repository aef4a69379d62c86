"""Monitoring: every host and exporter reports, the QPS Prometheus reports matches the load,
and failures raise alerts at the recorder.

Prometheus is queried where the host reaches it (the monitor's forwarded port, or its
address from an inventory), over HTTPS with the operator's login when monitor_tls is on;
the alert recorder is read on the monitor over SSH. Load comes from Locust on the host, aimed
at 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import testinfra

from acceptance.conftest import TOPOLOGY
from acceptance.site import SITE_CLIENT
from provision import PROJECT_ROOT, dbcluster, layout, monitoring
from provision.remote_write import snappy_block, write_request
from provision.testkit import prometheus_get
from provision.topology import Host

MONITOR = monitoring.monitor_host(TOPOLOGY)
assert MONITOR is not None
TARGETS = [
    (h.name, t.job)
    for h in monitoring.reporting_hosts(TOPOLOGY)
    for t in monitoring.targets(TOPOLOGY, h)
] + [(MONITOR.name, "prometheus"), (MONITOR.name, "alertmanager")]


def query(expr: str, at: float | None = None) -> list[dict[str, object]]:
    params = {"query": expr, **({"time": f"{at:.3f}"} if at else {})}
    body = json.loads(prometheus_get(TOPOLOGY, f"/api/v1/query?{urllib.parse.urlencode(params)}"))
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def scalar(expr: str, at: float | None = None) -> float:
    result = query(expr, at)
    assert result, f"no data for {expr}"
    return float(result[0]["value"][1])  # type: ignore[index]


def eventually(check: object, limit: float = 60, every: float = 1) -> object:
    deadline = time.monotonic() + limit
    while True:
        value = check()  # type: ignore[operator]
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


@pytest.mark.parametrize("host,job", TARGETS, ids=[f"{h}-{j}" for h, j in TARGETS])
def test_every_host_and_exporter_reports_up(host: str, job: str) -> None:
    def up() -> bool:
        result = query(f'up{{host="{host}", job="{job}"}}')
        return bool(result) and result[0]["value"][1] == "1"  # type: ignore[index]

    assert eventually(up), f"up{{host={host}, job={job}}} is not 1"


def test_every_series_carries_host_and_role_labels() -> None:
    assert query('count(up{host=""}) or count(up{role=""})') == []
    assert scalar("count(up)") >= len(TARGETS)


def _locust_run(tmp: Path, users: int, rate: float, seconds: int) -> int:
    """A fixed-rate headless Locust run; the number of requests it made.

    At the deadline each user finishes the request it has in flight (--stop-timeout), and
    the count is Locust's final one (--json-file: its CSV is written before those end)."""
    report = tmp / "locust.json"
    env = dict(os.environ, LOAD_RATE=str(rate))
    res = subprocess.run(
        [str(Path(sys.executable).parent / "locust"), "-f", "loadtests/qps.py", "--headless",
         "--host", SITE_CLIENT.entry.url(),
         "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "10",
         "--json-file", str(report.with_suffix("")), "--max-p95-ms", "5000", "--only-summary"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    entries = json.loads(report.read_text())
    assert sum(e["num_failures"] for e in entries) == 0
    return sum(int(e["num_requests"]) for e in entries)


RUN_SECONDS = 45  # long enough for the 30 s rate window plus 10 s of its samples
SITE_COUNTS = {
    # HAProxy's own exporter (an API, pushed by the balancers' agents).
    "exporter": 'sum(haproxy_frontend_http_requests_total{proxy="https"})',
    # The same balancers' log lines, shipped to the monitor and counted there by mtail.
    "logs": 'sum(log_haproxy_http_requests_total{frontend="https"}) or vector(0)',
    # What the web servers answered through the balancers (the exporter again).
    "servers": 'sum(haproxy_server_http_responses_total{proxy=~"web|api"})',
}


@pytest.mark.usefixtures("synthetic_checks_paused")
def test_three_independent_counts_of_the_site_s_requests_agree_with_locust(tmp_path: Path) -> None:
    """Locust's own count, HAProxy's exporter and mtail's count of HAProxy's log lines (three
    ways of collecting, none derived from another) agree within 1 % over a fixed-rate run."""
    # The monitor's own synthetic checks of the site are requests Locust does not make: they
    # are paused for the count (synthetic_checks_paused).
    time.sleep(6)  # a scrape after any earlier traffic: the counters are flat now
    start = time.time()
    before = {name: scalar(expr, start) for name, expr in SITE_COUNTS.items()}
    requests = _locust_run(tmp_path, users=10, rate=2.0, seconds=RUN_SECONDS)
    end = time.time()
    _three_counts_agree(requests, before, end)


def _three_counts_agree(requests: int, before: dict[str, float], end: float) -> None:

    def counts() -> dict[str, float]:
        now = time.time()
        return {name: scalar(expr, now) - before[name] for name, expr in SITE_COUNTS.items()}

    def agree(found: dict[str, float]) -> bool:
        return all(abs(n - requests) <= 0.01 * requests for n in found.values())

    # The agents scrape every 5 s and push within a second; a log line takes rsyslog's hop
    # and mtail's next read, then the monitor's next scrape (polled, up to 30 s).
    eventually(lambda: agree(counts()), 30, 2)
    found = counts()
    print(
        f"\nLocust: {requests} requests in {RUN_SECONDS} s ({requests / RUN_SECONDS:.2f}/s); "
        + ", ".join(
            f"{name} {n:.0f} ({(n - requests) / requests:+.2%})" for name, n in found.items()
        )
    )
    assert agree(found), f"Locust counted {requests}; the others: {found}"
    # The recorded QPS (a rate over 30 s) says the same once its window is inside the run:
    # averaged over [end - 12 s, end - 2 s], its windows span [end - 42 s, end - 2 s].
    for rule in ("testbed:site_qps", "testbed:site_qps_from_logs"):
        recorded = scalar(f"avg_over_time({rule}[10s])", end - 2)
        assert abs(recorded - requests / RUN_SECONDS) <= 0.10 * requests / RUN_SECONDS, (
            rule,
            recorded,
        )


PROBES = monitoring.probes(TOPOLOGY)


def test_the_monitor_s_synthetic_checks_of_the_site_and_its_ports_pass() -> None:
    """The blackbox exporter checks, from the monitor, the site on each balancer as a
    browser would (a certificate chaining to the testbed CA and naming the site, HSTS), the
    301 to HTTPS on port 80, and a TCP connect to each port the monitor may reach."""

    def passing() -> dict[tuple[str, str], str]:
        return {
            (r["metric"]["job"], r["metric"]["instance"]): r["value"][1]  # type: ignore[index]
            for r in query('probe_success{job=~"probe-.+"}')
        }

    want = {(f"probe-{p.module}", p.target) for p in PROBES}
    assert want, "the topology gives the monitor nothing to check"

    def all_pass() -> bool:
        seen = passing()
        return set(seen) >= want and all(seen[k] == "1" for k in want)

    if not eventually(all_pass, 30):
        seen = passing()
        failing = sorted(k for k in want & set(seen) if seen[k] != "1")
        raise AssertionError(f"failing: {failing}; missing: {sorted(want - set(seen))}")
    redirects = query('probe_http_status_code{job="probe-site_redirect"}')
    assert {r["value"][1] for r in redirects} == {"301"}  # type: ignore[index]
    # The certificate each balancer serves: valid now, and a short-lived one (90 days).
    for r in query('(probe_ssl_earliest_cert_expiry{job="probe-site_https"} - time()) / 86400'):
        days = float(r["value"][1])  # type: ignore[index]
        assert 0 < days <= 90, (r["metric"], days)  # type: ignore[index]


def test_the_monitor_checks_the_site_where_the_client_reaches_it(
    machines: dict[str, testinfra.host.Host],
) -> None:
    """The site is checked as a user reaches it: at the address the outside client's
    machine resolves the site's name to (the floating address in hardened), over the users'
    network, not only on each balancer's private address. Passing, with the 301 on 80."""
    client = machines[TOPOLOGY.with_role("client")[0].name]
    line = client.check_output(f"getent ahostsv4 {TOPOLOGY.site.name}").splitlines()[0]
    address = line.split()[0]

    def at_user_address() -> dict[str, str]:
        return {
            r["metric"]["job"]: r["value"][1]  # type: ignore[index]
            for r in query(f'probe_success{{instance=~"https?://{address}:[0-9]+/"}}')
        }

    want = {"probe-site_https": "1", "probe-site_redirect": "1"}
    assert eventually(lambda: at_user_address() == want, 30), (address, at_user_address())
    # Over the monitor's own address on the users' network: the check leaves the monitor
    # there, as a user's request would (the route to the site's address).
    mon = monitoring.monitor_host(TOPOLOGY)
    assert mon is not None
    route = machines[mon.name].check_output(f"ip -4 route get {address}")
    assert f"src {mon.addresses['public']}" in route, route


def test_a_balancer_whose_haproxy_stops_fires_and_resolves_the_site_probe_alert(
    machines: dict[str, testinfra.host.Host], endpoints: object
) -> None:
    """HAProxy stopped on a balancer that does not hold the site's floating address (with
    one balancer, the site itself is down meanwhile): its site check fails, the alert
    fires for that balancer, and resolves once HAProxy is back."""
    from provision.engine import Remote

    balancers = [h.name for h in TOPOLOGY.with_role("lb")]
    vips = [str(v.address) for v in TOPOLOGY.vips.values()]
    holding = set()
    for name in balancers:
        with Remote(TOPOLOGY.hosts[name], endpoints[name]) as r:  # type: ignore[index]
            if any(f" {v}/" in r.run("ip -o -4 addr show").stdout for v in vips):
                holding.add(name)
    lb = next(n for n in balancers if n not in holding) if len(balancers) > 1 else balancers[0]
    _stop_fires_start_resolves(machines, lb, "haproxy", "SiteProbeFailing", {"host": lb})


LOG_WEB = next(h.name for h in monitoring.log_senders(TOPOLOGY) if h.has_role("web"))


def test_log_parsing_counts_failed_ssh_logins_and_firewall_drops_by_host(
    machines: dict[str, testinfra.host.Host], ssh_config: Path
) -> None:
    """mtail on the monitor reads every host's shipped log: an SSH login as a user sshd
    does not let in, and a connection the web host's own firewall refuses, each show up
    in Prometheus under that host."""
    failed = (
        f'sum(log_sshd_failed_logins_total{{host="{LOG_WEB}",user_kind="invalid"}}) or vector(0)'
    )
    drops = f'sum(log_firewall_drops_total{{host="{LOG_WEB}",kind="egress"}}) or vector(0)'
    failed_before, drops_before = scalar(failed), scalar(drops)
    user = f"testbed-nobody-{os.getpid()}"
    res = subprocess.run(
        ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "-l", user, LOG_WEB, "true"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode != 0, f"{user} logged in to {LOG_WEB}"
    # A port no flow uses, toward the monitor: the web host's egress refuses and logs it
    # (ulogd logs at most 10 a minute, so it is tried again until one counts).
    address = monitoring.syslog_target(TOPOLOGY, TOPOLOGY.hosts[LOG_WEB])
    port = 40000 + os.getpid() % 20000
    assert port not in {f.port for f in TOPOLOGY.flows}

    def counted() -> bool:
        machines[LOG_WEB].run(f"nc -z -w 1 {address} {port}")
        return scalar(failed) > failed_before and scalar(drops) > drops_before

    assert eventually(counted, 45, 3), (
        f"failed logins {failed_before} -> {scalar(failed)}, "
        f"egress drops {drops_before} -> {scalar(drops)} on {LOG_WEB}"
    )


def _alerts(machine: testinfra.host.Host) -> list[dict[str, object]]:
    return json.loads(machine.check_output(f"curl -s http://{layout.ALERT_RECEIVER_LISTEN}/alerts"))  # type: ignore[no-any-return]


def _wait_alert(
    machine: testinfra.host.Host,
    name: str,
    status: str,
    since: float,
    limit: float = 120,
    **labels: str,
) -> float:
    """Seconds from `since` (epoch) until the recorder got `name` with `status`."""

    def find() -> float | None:
        for alert in _alerts(machine):
            al = alert["labels"]  # type: ignore[index]
            if (
                al.get("alertname") == name
                and alert["status"] == status  # type: ignore[union-attr]
                and all(al.get(k) == v for k, v in labels.items())  # type: ignore[union-attr]
                and alert["received"] >= since
            ):  # type: ignore[operator]
                return float(alert["received"]) - since  # type: ignore[arg-type]
        return None

    found = eventually(find, limit, 1)
    assert found is not None, f"{name} {status} {labels} not recorded within {limit} s"
    return found  # type: ignore[return-value]


def _stop_fires_start_resolves(
    machines: dict[str, testinfra.host.Host], on: str, unit: str, alert: str, labels: dict[str, str]
) -> None:
    """Stop `unit` on host `on`: `alert` (with `labels`) reaches the recorder firing; start
    it again: the alert resolves. Prints how long each took."""
    recorder = machines[MONITOR.name]
    stopped = time.time()
    machines[on].check_output(f"systemctl stop {unit}")
    try:
        fired = _wait_alert(recorder, alert, "firing", stopped, **labels)
    finally:
        started = time.time()
        machines[on].check_output(f"systemctl start {unit}")
    resolved = _wait_alert(recorder, alert, "resolved", started, **labels)
    print(
        f"\n{alert} for {on}: fired {fired:.1f} s after {unit} stopped, "
        f"resolved {resolved:.1f} s after it started"
    )


def _a_replica(endpoints: object) -> str:

    states = dbcluster.states(TOPOLOGY, endpoints)  # type: ignore[arg-type]
    return next(n for n, s in states.items() if s.role == "replica")


def test_a_replica_stopped_and_made_writable_fires_and_resolves_both_database_alerts(
    machines: dict[str, testinfra.host.Host], endpoints: object
) -> None:
    """On one replica at once: replication stopped (ReplicationStopped) and writes allowed by
    hand (SplitBrain: two nodes accept writes). Harmless here: the writer endpoints send
    writes only to a node that replicates from no one, and this one still has its source
    configured; but exactly what a split brain looks like to the monitoring. Repaired (read
    only again, replication started), both alerts resolve."""
    replica = _a_replica(endpoints)
    recorder = machines[MONITOR.name]
    alerts = [("ReplicationStopped", {"host": replica}), ("SplitBrain", {})]
    # With automatic failover the controller fences such a node within 2 s, before
    # Prometheus has scraped it (every 5 s): hold it off, to see what the monitoring sees.
    controller = recorder.service("dbwatch").is_running
    if controller:
        recorder.check_output("systemctl stop dbwatch")
    broken = time.time()
    try:
        try:
            machines[replica].check_output("mariadb -e 'STOP SLAVE; SET GLOBAL read_only = OFF'")
            fired = {a: _wait_alert(recorder, a, "firing", broken, **ls) for a, ls in alerts}
        finally:
            repaired = time.time()
            machines[replica].check_output("mariadb -e 'SET GLOBAL read_only = ON; START SLAVE'")
        resolved = {a: _wait_alert(recorder, a, "resolved", repaired, **ls) for a, ls in alerts}
    finally:
        if controller:
            recorder.check_output("systemctl start dbwatch")
    for alert in fired:
        print(f"\n{alert} ({replica}): fired {fired[alert]:.1f} s after the fault, "
              f"resolved {resolved[alert]:.1f} s after the repair")  # fmt: skip


def test_the_dashboard_renders_every_section_with_live_values() -> None:
    page = prometheus_get(TOPOLOGY, "/consoles/testbed.html").decode()
    sections = ("Site", "Servers", "Synthetic checks", "From the logs", "Database", "Active alerts")
    for section in sections:
        assert f"<h2>{section}</h2>" in page
    for host in monitoring.reporting_hosts(TOPOLOGY):
        assert f"<td>{host.name}</td>" in page
    assert "req/s" in page
    assert "error executing template" not in page


@pytest.mark.skipif(
    not TOPOLOGY.option("monitor_tls"), reason=f"{TOPOLOGY.name} pushes in clear (no monitor_tls)"
)
def test_the_monitor_takes_pushes_over_https_from_its_agent_user_only(
    machines: dict[str, testinfra.host.Host],
) -> None:
    """From an agent's host, the way its pushes go: plain HTTP and a push without the agent's
    login are refused; with it, Prometheus reads the (empty) push."""
    assert MONITOR is not None
    agent = next(h for h in monitoring.reporting_hosts(TOPOLOGY) if h is not MONITOR)
    url = monitoring.remote_write_url(TOPOLOGY, agent)
    host = machines[agent.name]
    curl = f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -X POST --resolve {MONITOR.name}"
    address = url.split("//")[1].split("/")[0]
    name_url = url.replace(address.split(":")[0], MONITOR.name)
    resolve = f"{curl}:{address.split(':')[1]}:{address.split(':')[0]}"
    ca = f"--cacert {monitoring.CA_FILE}"
    plain = host.run(f"{resolve} {name_url.replace('https://', 'http://')}").stdout
    assert plain == "400", f"plain HTTP to the monitor: {plain}"
    assert host.run(f"{resolve} {ca} {name_url}").stdout == "401", "a push with no login"
    wrong = host.run(f"{resolve} {ca} -u {monitoring.AGENT_USER}:wrong {name_url}").stdout
    assert wrong == "401", "a push with a wrong password"
    login = f"-u {monitoring.AGENT_USER}:$(cat {monitoring.AGENT_PASSWORD_FILE})"
    good = host.run(f"{resolve} {ca} {login} {name_url}").stdout
    assert good not in ("401", "000"), f"the agent's own login: {good}"


@pytest.mark.skipif(
    not TOPOLOGY.option("monitor_tls"),
    reason=f"{TOPOLOGY.name} takes pushes in clear (no monitor_tls)",
)
def test_a_forged_series_pushed_without_the_agent_s_login_is_refused_and_not_stored(
    machines: dict[str, testinfra.host.Host],
) -> None:
    """A real remote-write request (a series and a sample, protobuf and snappy) pushed from
    an agent's host without the login, with a wrong one, and from the outside client: none
    is stored. The same request with the agent's login is (so the refusals are not about a
    malformed request)."""
    assert MONITOR is not None
    agent = next(h for h in monitoring.reporting_hosts(TOPOLOGY) if h is not MONITOR)
    client = TOPOLOGY.with_role("client")[0]
    name = f"testbed_forged_series_{os.getpid()}"
    port = TOPOLOGY.port("prometheus")
    headers = (
        "-H 'Content-Encoding: snappy' -H 'Content-Type: application/x-protobuf' "
        "-H 'X-Prometheus-Remote-Write-Version: 0.1.0'"
    )

    def push(host: Host, attempt: str, auth: str) -> str:
        body = snappy_block(
            write_request({"__name__": name, "attempt": attempt}, 1.0, int(time.time() * 1000))
        )
        address = TOPOLOGY.address_for(host, MONITOR)
        url = f"https://{MONITOR.name}:{port}/api/v1/write"
        ca = f"--cacert {monitoring.CA_FILE}" if host is agent else "-k"
        return (
            machines[host.name]
            .run(
                f"echo {base64.b64encode(body).decode()} | base64 -d | "
                f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {ca} {auth} {headers} "
                f"--resolve {MONITOR.name}:{port}:{address} --data-binary @- {url}"
            )
            .stdout
        )

    refused = {
        "no-login": push(agent, "no-login", ""),
        "wrong-login": push(agent, "wrong-login", f"-u {monitoring.AGENT_USER}:wrong"),
        "client": push(client, "client", f"-u {monitoring.AGENT_USER}:guessed"),
    }
    stored = push(
        agent, "agent", f"-u {monitoring.AGENT_USER}:$(cat {monitoring.AGENT_PASSWORD_FILE})"
    )
    assert stored == "204", f"the agent's own push of the same request: HTTP {stored}"
    assert refused["no-login"] == refused["wrong-login"] == "401", refused
    assert refused["client"] == "000", f"the client reached the monitor: {refused}"

    def attempts() -> set[str]:
        return {r["metric"]["attempt"] for r in query(f"last_over_time({name}[5m])")}  # type: ignore[index]

    assert eventually(lambda: "agent" in attempts(), 15), "the agent's push was not stored"
    assert attempts() == {"agent"}, f"stored without the login: {attempts() - {'agent'}}"


def test_four_faults_at_once_fire_and_resolve_their_alerts(
    machines: dict[str, testinfra.host.Host],
) -> None:
    """Four faults of different kinds, on three hosts, at the same time; each fires its own
    alerts, and each alert resolves once its fault is repaired (latencies printed,
    docs/monitoring.md):
    - a web host's app stopped: ExporterDown (the agent scrapes the app's metrics and fails)
      and BackendDown (the balancers' health check fails: the site is served by the others);
    - another web host's agent stopped: HostSilent (nothing arrives from that host);
    - a balancer drops the monitor's packets to its stats port: ServicePortUnreachable;
    - the balancer's agent reports a certificate a day from expiry: CertificateExpiringSoon."""
    assert MONITOR is not None
    web_a, web_b = (h.name for h in TOPOLOGY.with_role("web")[:2])
    lb = TOPOLOGY.with_role("lb")[0]
    monitor_address = TOPOLOGY.address_for(lb, MONITOR)
    stats = TOPOLOGY.port("haproxy-stats")
    cut = f"INPUT -s {monitor_address} -p tcp --dport {stats} -j DROP"
    expiry = layout.CERT_EXPIRY_TEXTFILE
    soon = int(time.time()) + 86400
    # host, break, repair, the alerts it must fire. The agent's stop comes last: a stopping
    # Prometheus first pushes what it holds, for up to its flush deadline (a minute), and
    # on a testbed just brought up the faults started after it were 30 s late; each alert's
    # latency counts from its own fault.
    faults = [
        (web_a, "systemctl stop testbed-app", "systemctl start testbed-app",
         [("ExporterDown", {"host": web_a, "job": "app"}), ("BackendDown", {"server": web_a})]),
        (lb.name, f"iptables -I {cut}", f"iptables -D {cut}",
         [("ServicePortUnreachable", {"host": lb.name, "service": "haproxy-stats"})]),
        (lb.name, f"cp -p {expiry} {expiry}.saved && sed -i '/^testbed/s/[0-9]*$/{soon}/' {expiry}",
         f"mv -f {expiry}.saved {expiry}", [("CertificateExpiringSoon", {"host": lb.name})]),
        (web_b, "systemctl stop prometheus", "systemctl start prometheus",
         [("HostSilent", {"host": web_b})]),
    ]  # fmt: skip
    recorder = machines[MONITOR.name]
    broken: list[float] = []  # when each fault was started: its alerts' latency counts from it
    repaired: list[float] = []
    try:
        for host, do, _, _ in faults:
            broken.append(time.time())
            machines[host].check_output(do)
        fired = {
            a: _wait_alert(recorder, a, "firing", at, **ls)
            for at, (*_, alerts) in zip(broken, faults, strict=True)
            for a, ls in alerts
        }
    finally:
        undone = []
        for host, _, undo, _ in faults[: len(broken)]:  # only the faults that were made
            repaired.append(time.time())
            undone.append((host, machines[host].run(undo).rc))
    assert [rc for _, rc in undone] == [0] * len(undone), f"a repair failed: {undone}"
    resolved = {
        a: _wait_alert(recorder, a, "resolved", at, **ls)
        for at, (*_, alerts) in zip(repaired, faults, strict=True)
        for a, ls in alerts
    }
    for alert in fired:
        print(f"\n{alert}: fired {fired[alert]:.1f} s after its fault, "
              f"resolved {resolved[alert]:.1f} s after the repair")  # fmt: skip


RULE_TESTS = """
rule_files: [/etc/prometheus/rules/testbed.yml]
evaluation_interval: 5s
group_eval_order: [testbed-recording, testbed-alerts]
tests:
  - interval: 5s
    input_series:
      # 10 % of the site's answers are 5xx for 3 minutes, then none.
      - series: 'haproxy_frontend_http_responses_total{proxy="https",code="5xx",host="lb1"}'
        values: '0+10x36 360+0x36'
      - series: 'haproxy_frontend_http_responses_total{proxy="https",code="2xx",host="lb1"}'
        values: '0+90x72'
      # A replica 40 s behind for 2 minutes, then caught up.
      - series: 'mysql_slave_status_seconds_behind_master{host="db2"}'
        values: '0 40+0x24 0+0x24'
      # The writable primary without semi-sync for 30 s; a replica (read-only) without it
      # all along, which is normal.
      - series: 'mysql_global_status_rpl_semi_sync_master_status{host="db1"}'
        values: '1 0+0x6 1+0x12'
      - series: 'mysql_global_variables_read_only{host="db1"}'
        values: '0+0x20'
      - series: 'mysql_global_status_rpl_semi_sync_master_status{host="db2"}'
        values: '0+0x20'
      - series: 'mysql_global_variables_read_only{host="db2"}'
        values: '1+0x20'
      # A balancer serving a certificate 5 days from expiry for 30 s, then a renewed one.
      - series: 'probe_ssl_earliest_cert_expiry{job="probe-site_https",host="lb1"}'
        values: '432000+0x6 5184000+0x6'
      # / on web1 95 % full for 6 min 40 s, then half empty.
      - series: 'node_filesystem_avail_bytes{fstype="ext4",mountpoint="/",host="web1"}'
        values: '5+0x80 50+0x20'
      - series: 'node_filesystem_size_bytes{fstype="ext4",mountpoint="/",host="web1"}'
        values: '100+0x100'
    alert_rule_test:
      - {alertname: HighErrorRatio, eval_time: 50s}
      - alertname: HighErrorRatio
        eval_time: 2m
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations: {summary: "more than 5% of the site's answers are 5xx"}
      - {alertname: HighErrorRatio, eval_time: 5m}
      - {alertname: ReplicationLagging, eval_time: 50s}
      - alertname: ReplicationLagging
        eval_time: 90s
        exp_alerts:
          - exp_labels: {severity: warning, host: db2}
            exp_annotations: {summary: "db2 is more than 30 s behind its primary"}
      - {alertname: ReplicationLagging, eval_time: 3m}
      - alertname: SemiSyncOff
        eval_time: 20s
        exp_alerts:
          - exp_labels: {severity: critical, host: db1}
            exp_annotations:
              summary: "the primary db1 commits without a replica's acknowledgement"
      - {alertname: SemiSyncOff, eval_time: 60s}
      - alertname: ServedCertificateExpiringSoon
        eval_time: 10s
        exp_alerts:
          - exp_labels: {severity: warning, host: lb1, job: probe-site_https}
            exp_annotations: {summary: "the certificate lb1 serves expires within 14 days"}
      - {alertname: ServedCertificateExpiringSoon, eval_time: 50s}
      - {alertname: DiskAlmostFull, eval_time: 4m}
      - alertname: DiskAlmostFull
        eval_time: 6m
        exp_alerts:
          - exp_labels: {severity: warning, host: web1, fstype: ext4, mountpoint: /}
            exp_annotations: {summary: "/ on web1 is over 90% full"}
      - {alertname: DiskAlmostFull, eval_time: 8m}
"""
"""Written by hand: the faults the tests above cannot cause quickly (a minute of 5xx, a
replica 30 s behind for a minute, a disk filling for five) as series, and what the
deployed rules must make of them: quiet before `for:` has passed, firing with these labels
and words, resolved after the repair."""


def test_the_deployed_alert_rules_fire_and_resolve_on_hand_written_series(
    machines: dict[str, testinfra.host.Host],
) -> None:
    """promtool (Prometheus's own rule tester) runs the monitor's live rules file against
    RULE_TESTS: the alerts no end-to-end test here can afford to wait for (HighErrorRatio and
    ReplicationLagging need a minute, DiskAlmostFull five) and the two whose faults would
    disturb other tests (SemiSyncOff, ServedCertificateExpiringSoon)."""
    assert MONITOR is not None
    monitor = machines[MONITOR.name]
    path = f"/tmp/testbed-rule-tests-{os.getpid()}.yml"
    encoded = base64.b64encode(RULE_TESTS.encode()).decode()
    monitor.check_output(f"echo {encoded} | base64 -d > {path}")
    try:
        res = monitor.run(f"promtool test rules {path}")
    finally:
        monitor.run(f"rm -f {path}")
    assert res.rc == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr
