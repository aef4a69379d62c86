"""SNMP: every host answers the monitor over SNMPv3 (authPriv) and nobody else, a v2c
community or a wrong password gets nothing, and what snmp_exporter collects agrees with
what the node agents report.

Every request is made with net-snmp's own snmpget, inside the machines: from the monitor
(root's defaults there are the testbed's SNMPv3 user: no password on a command line, so
none in a failure message), and from the other hosts, which must get no answer at all.
"""

from __future__ import annotations

import testinfra

from acceptance.conftest import TOPOLOGY
from acceptance.test_monitoring import eventually, query
from provision import monitoring
from provision.testkit import prometheus_get

MONITOR = monitoring.monitor_host(TOPOLOGY)
assert MONITOR is not None
POLLED = monitoring.snmp_targets(TOPOLOGY)
POLLED_IDS = [p.host for p in POLLED]
SYS_NAME = ".1.3.6.1.2.1.1.5.0"  # SNMPv2-MIB::sysName.0
OUTSIDE_VIEW = ".1.3.6.1.2.1.4.1.0"  # IP-MIB::ipForwarding.0: not in the user's view
WRONG = "wrong-password-0123456789"
Machines = dict[str, testinfra.host.Host]
Answers = dict[str, str]


def ask_all(
    machine: testinfra.host.Host, requests: dict[str, str], wait: int = 2
) -> dict[str, str]:
    """Run snmpget requests at once on `machine` (one try each, `wait` s for an answer):
    key -> "options target oid"; returns key -> the whole answer (stdout and stderr) on one line."""
    script = "".join(
        f'( echo "{key} $(snmpget -t {wait} -r 0 -On {args} 2>&1 | tr -s "\\n" " ")" ) & '
        for key, args in requests.items()
    )
    out = machine.check_output(script + "wait")
    answers = dict(line.partition(" ")[::2] for line in out.splitlines())
    assert answers.keys() == requests.keys(), out
    return answers


# net-snmp derives a key from a password as it reads the option: the hash's comes first.
AUTH, PRIV = f"-a {monitoring.SNMP_AUTH[0]}", f"-x {monitoring.SNMP_PRIV[0]}"
ASKS = {
    # what is asked -> (options, OID, the answer: "Timeout" for none, else a part of it)
    "as-the-user": ("", SYS_NAME, '= STRING: "{host}"'),
    "outside-the-view": ("", OUTSIDE_VIEW, "No Such Object"),
    "v1-public": ("-v1 -c public", SYS_NAME, "Timeout"),
    "v2c-public": ("-v2c -c public", SYS_NAME, "Timeout"),
    "wrong-auth-password": (f"{AUTH} -A {WRONG}", SYS_NAME, "Authentication failure"),
    # A wrong privacy password decrypts to garbage: snmpd drops it, nothing comes back.
    "wrong-priv-password": (f"{AUTH} {PRIV} -X {WRONG}", SYS_NAME, "Timeout"),
    "user-without-encryption": ("-l authNoPriv", SYS_NAME, "authorizationError"),
    "unknown-user": ("-v3 -l noAuthNoPriv -u nobody", SYS_NAME, "Unknown user name"),
}


def _as_expected(answer: str, expected: str) -> bool:
    return answer.startswith("Timeout") if expected == "Timeout" else expected in answer


def test_the_monitor_reads_every_host_as_the_user_and_nobody_else_gets_anything(
    machines: Machines,
) -> None:
    """From the monitor (the firewall lets it through), for every host at once:
    - as the testbed's user (authPriv), the host's own name; outside the user's view, no
      such object (the user may read only what the monitor polls);
    - `public` over v1 and v2c: no answer at all (snmpd has no community);
    - a wrong authentication password: refused; a wrong privacy password: no answer;
    - the right user without encryption: refused (`priv` is required);
    - a user snmpd does not know: refused, which shows snmpd answers this host."""
    assert MONITOR is not None
    requests = {
        f"{p.host}/{ask}": f"{options} {p.target} {oid}"
        for p in POLLED
        for ask, (options, oid, _) in ASKS.items()
    }
    answers = ask_all(machines[MONITOR.name], requests)
    wrong = {
        key: answer
        for key, answer in answers.items()
        if not _as_expected(answer, ASKS[key.split("/")[1]][2].format(host=key.split("/")[0]))
    }
    assert wrong == {}, "answers that differ from what is expected"


def test_only_the_monitor_reaches_snmpd(machines: Machines) -> None:
    """The request snmpd answers from the monitor (an unknown user: refused, above) gets
    no answer from any other host: refused by the asking host's own egress rules, or
    dropped by the firewall of the host asked."""
    assert MONITOR is not None
    got = {}
    for source in (h.name for h in monitoring.reporting_hosts(TOPOLOGY) if h is not MONITOR):
        options, oid, _ = ASKS["unknown-user"]
        requests = {
            f"{source}->{p.host}": f"{options} {p.target} {oid}" for p in POLLED if p.host != source
        }
        got.update(ask_all(machines[source], requests, wait=1))
    silent = ("Timeout", "snmpget: Unknown engine ID (Operation not permitted)")
    answered = {k: v for k, v in got.items() if not v.startswith(silent)}
    assert answered == {}, "hosts other than the monitor got an answer from snmpd"


def test_snmpd_listens_on_the_private_address_only(machines: Machines) -> None:
    """Every UDP socket on the SNMP port, on every host, is on the one address the monitor
    polls (the firewall's rules would otherwise be all that keeps snmpd from the public or
    management networks). ss shows no process here: a container's root may not read the
    file descriptors of snmpd's own user."""
    port = TOPOLOGY.port("snmp")
    found = {}
    for probe in POLLED:
        out = machines[probe.host].check_output(f"ss -Hulnp 'sport = :{port}'")
        found[probe.host] = sorted(line.split()[3] for line in out.splitlines() if line.strip())
    assert found == {p.host: [p.target] for p in POLLED}


def test_snmp_exporter_collects_every_host_and_agrees_with_the_node_agent() -> None:
    """Prometheus has every host's SNMP series (interfaces, load, memory, uptime), and the
    octets SNMP counts on each interface agree with node_exporter's count of the same
    interface (two collection paths, one kernel counter), within 1 % plus what the
    interface carries in the two scrape intervals that may separate the two readings."""

    def all_up() -> bool:
        up = {r["metric"]["host"]: r["value"][1] for r in query('up{job="snmp"}')}  # type: ignore[index]
        return up == dict.fromkeys(POLLED_IDS, "1")

    assert eventually(all_up, limit=30), query('up{job="snmp"}')
    for metric in ("sysUpTime", "hrSystemUptime", "memAvailReal", "laLoadInt", "ifOperStatus"):
        hosts = {r["metric"]["host"] for r in query(f'{metric}{{job="snmp"}}')}  # type: ignore[index]
        assert hosts == set(POLLED_IDS), metric
    snmp = _by_interface('ifHCInOctets{job="snmp", ifName=~"eth.*"}', "ifName")
    node = _by_interface('node_network_receive_bytes_total{device=~"eth.*"}', "device")
    assert snmp.keys() == node.keys()
    # The two are read up to a scrape apart (5 s): allow what the interface carried in two.
    rate = _by_interface('rate(node_network_receive_bytes_total{device=~"eth.*"}[1m])', "device")
    slack = {k: 0.01 * node[k] + 2 * 5 * rate[k] for k in node}
    far = {k: (snmp[k], node[k], slack[k]) for k in node if abs(snmp[k] - node[k]) > slack[k]}
    assert far == {}, "SNMP and node_exporter disagree (octets in: SNMP, node, allowed gap)"


def _by_interface(expr: str, label: str) -> dict[tuple[str, str], float]:
    return {
        (r["metric"]["host"], r["metric"][label]): float(r["value"][1])  # type: ignore[index]
        for r in query(expr)
    }


def test_the_dashboard_shows_interface_traffic_from_snmp() -> None:
    page = prometheus_get(TOPOLOGY, "/consoles/testbed.html").decode()
    section = page.split("<h2>Over SNMP", 1)[1].split("<h2>", 1)[0]
    for host in POLLED_IDS:
        assert f"<td>{host}</td>" in section
    assert " b/s" in section and "error executing template" not in section
