"""Central logs: every host that shares a network with the monitor ships its logs there over
TLS (rsyslog), and `fab logs` reads them.

A line logged on each host reaches /var/log/remote/<host>.log on the monitor; a service's
journal lines (sshd's logins) and the firewall's drops get there too; nothing is lost while
the monitor's rsyslog is stopped (the senders' disk-assisted queues), each line arriving
once; a TLS client without a certificate from the internal CA cannot deliver a line, one
with a sender's certificate can (the control). Hosts are found by role, never by name.
"""

from __future__ import annotations

import re
import shlex
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import testinfra

from acceptance.conftest import TOPOLOGY, connect
from provision import monitoring
from provision.testkit import fab

MONITOR = monitoring.monitor_host(TOPOLOGY)
assert MONITOR is not None
SENDERS = [h.name for h in monitoring.log_senders(TOPOLOGY)]
LOG_HOSTS = [h.name for h in monitoring.reporting_hosts(TOPOLOGY)]
"""The senders and the monitor itself (it writes its own logs beside theirs)."""
WEB = next(h.name for h in monitoring.log_senders(TOPOLOGY) if h.has_role("web"))
PORT = TOPOLOGY.port("syslog-tls")
Machines = dict[str, testinfra.host.Host]
T = TypeVar("T")


def eventually(check: Callable[[], T], limit: float, every: float = 0.5) -> T:
    """`check()` until it returns something true or `limit` seconds pass; its last value."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


SUDO_LINE = re.compile(r"^\S+ \S+ sudo(\[\d+\])?:? ")
"""sudo logs each command it runs, and the tests' commands carry their markers."""


def stored(machines: Machines, host: str, text: str) -> list[str]:
    """The lines of `host`'s file on the monitor that contain `text` (not sudo's record of
    the command that logged it)."""
    path = monitoring.log_file(host)
    res = machines[MONITOR.name].run(f"grep -F -- {shlex.quote(text)} {path}")
    return [line for line in res.stdout.splitlines() if not SUDO_LINE.match(line)]


def marker(what: str) -> str:
    return f"testbed-{what}-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("name", LOG_HOSTS)
def test_a_line_logged_on_a_host_reaches_its_file_on_the_monitor(
    machines: Machines, name: str
) -> None:
    probe = marker(f"probe-{name}")
    sent = time.monotonic()
    machines[name].check_output(f"logger -t testbed-probe {probe}")
    found = eventually(lambda: stored(machines, name, probe), 15)
    took = time.monotonic() - sent
    assert found, f"{probe}, logged on {name}, not in {monitoring.log_file(name)} within 15 s"
    assert len(found) == 1, found
    # rsyslog's file format: an RFC 3339 time, the host, the tag, the message.
    assert re.match(rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\S+ {name} testbed-probe", found[0])
    print(f"\n{name}: on the monitor {took:.1f} s after it was logged")


@pytest.mark.parametrize("name", [h.name for h in TOPOLOGY.with_role("client")])
def test_the_client_ships_nothing(machines: Machines, name: str) -> None:
    """The outside client shares no network with the monitor: no rsyslog config of ours,
    and no file for it on the monitor."""
    assert not machines[name].file(monitoring.SYSLOG_CONFIG).exists
    assert not machines[MONITOR.name].file(monitoring.log_file(name)).exists


def test_rsyslog_listens_on_the_monitor_s_private_addresses_only(machines: Machines) -> None:
    listening = {
        spec
        for spec in machines[MONITOR.name].socket.get_listening_sockets()
        if spec.startswith("tcp://") and spec.endswith(f":{PORT}")
    }
    wanted = {f"tcp://{a}:{PORT}" for a in monitoring.syslog_listen_addresses(TOPOLOGY)}
    assert wanted and listening == wanted


def test_a_service_s_journal_reaches_the_monitor(ssh_config: Path) -> None:
    """sshd logs to the journal, which forwards to rsyslog: a new SSH login to a web host
    is on the monitor, under the program name sshd."""
    connect(WEB, ssh_config).check_output("true")  # a new session: a new login line

    def logins() -> str:
        return fab("logs", "--host", WEB, "--unit", "sshd", "--since", "5m")

    assert eventually(lambda: "Accepted publickey" in logins(), 20, every=2), (
        f"no sshd login of {WEB} on the monitor: {logins()[-2000:]}"
    )


def test_the_firewall_s_drops_reach_the_monitor(machines: Machines) -> None:
    """A connection the web host's egress refuses is logged by ulogd2 (fw-egress) and
    shipped: at most 10 are logged a minute, so it is tried again until one is."""
    address = monitoring.syslog_target(TOPOLOGY, TOPOLOGY.hosts[WEB])
    port = 40000 + uuid.uuid4().int % 20000  # no flow uses it: refused, logged
    allowed = {f.port for f in TOPOLOGY.flows}
    assert port not in allowed

    def dropped() -> list[str]:
        machines[WEB].run(f"nc -z -w 1 {address} {port}")
        return [line for line in stored(machines, WEB, f"DPT={port} ") if "fw-egress" in line]

    found = eventually(dropped, 40, every=2)
    assert found, f"no fw-egress line for port {port} from {WEB} on the monitor within 40 s"
    assert " ulogd " in found[0] or " ulogd: " in found[0]


def test_a_tls_client_without_a_certificate_cannot_deliver_a_line(machines: Machines) -> None:
    """openssl s_client from a web host to the monitor's rsyslog: without a client
    certificate the line is refused; with the host's own (the control), it is stored."""
    web = machines[WEB]
    address = monitoring.syslog_target(TOPOLOGY, TOPOLOGY.hosts[WEB])
    refused, control = marker("nocert"), marker("withcert")

    def send(text: str, certificate: bool) -> None:
        line = f"<13>1 - {WEB} testbed-probe - - - {text}"
        cert = (
            f"-cert {monitoring.SYSLOG_CERT_FILE} -key {monitoring.SYSLOG_KEY_FILE} "
            if certificate
            else ""
        )
        # -no_ign_eof: close once the line is sent (-quiet alone would wait for the server).
        web.run(
            f"printf '%s\\n' {shlex.quote(line)} | timeout 10 openssl s_client "
            f"-connect {address}:{PORT} -CAfile {monitoring.SYSLOG_CA_FILE} {cert}"
            "-verify_return_error -quiet -no_ign_eof"
        )

    send(refused, certificate=False)
    send(control, certificate=True)
    assert eventually(lambda: stored(machines, WEB, control), 15), (
        "the control (a client with the sender's certificate) did not get its line stored: "
        "the probe itself is broken"
    )
    time.sleep(2)  # the refused line was sent first: it would be there by now
    assert stored(machines, WEB, refused) == []


def test_fab_logs_prints_a_line_logged_on_a_web_host(machines: Machines) -> None:
    probe = marker("fab-logs")
    machines[WEB].check_output(f"logger -t testbed-probe {probe}")
    assert eventually(lambda: stored(machines, WEB, probe), 15)
    out = fab("logs", "--host", WEB, "--grep", probe)
    shown = [line for line in out.splitlines() if probe in line and " sudo " not in line]
    assert len(shown) == 1, out[-2000:]
    assert shown[0].startswith(f"{WEB} ") and "testbed-probe" in shown[0]
    assert probe in fab("logs", "--host", WEB, "--unit", "testbed-probe", "--since", "5m")
    assert probe not in fab("logs", "--host", WEB, "--unit", "sshd", "--since", "5m")


MESSAGES = 200


@pytest.mark.disruptive
def test_nothing_is_lost_while_the_monitor_s_rsyslog_is_stopped(machines: Machines) -> None:
    """Stop rsyslog on the monitor (and its socket, or the monitor's own next log line
    would start it again), send 200 numbered lines from a web host over about 10 s, wait
    20 s, start it: within 30 s every line is there, each exactly once."""
    monitor, web = machines[MONITOR.name], machines[WEB]
    run = marker("outage")
    monitor.check_output("systemctl stop syslog.socket rsyslog.service")
    try:
        assert not monitor.service("rsyslog").is_running
        assert not [
            s
            for s in monitor.socket.get_listening_sockets()
            if s.startswith("tcp://") and s.endswith(f":{PORT}")
        ]
        web.check_output(
            f"for i in $(seq 1 {MESSAGES}); do logger -t testbed-probe {run}-$i; sleep 0.05; done"
        )
        time.sleep(20)
        assert stored(machines, WEB, run) == [], "lines arrived while rsyslog was stopped"
    finally:
        monitor.check_output("systemctl start syslog.socket rsyslog.service")
    started = time.monotonic()
    pattern = re.compile(rf"{re.escape(run)}-(\d+)$")

    def numbers() -> list[int]:
        return [
            int(m.group(1)) for line in stored(machines, WEB, run) if (m := pattern.search(line))
        ]

    eventually(lambda: len(set(numbers())) >= MESSAGES, 30, every=1)
    took = time.monotonic() - started
    got = numbers()
    missing = sorted(set(range(1, MESSAGES + 1)) - set(got))
    twice = sorted({n for n in got if got.count(n) > 1})
    assert not missing, f"{len(missing)} lines lost, e.g. {missing[:10]}"
    assert not twice, f"lines stored more than once: {twice[:10]}"
    assert len(got) == MESSAGES
    print(f"\nall {MESSAGES} lines on the monitor {took:.1f} s after its rsyslog started")
