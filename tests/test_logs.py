"""Central logs: the logs role's rsyslog configs and files for both topologies, and the pure
parsing and filtering behind `fab logs` (no machine needed; awk runs locally)."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from provision import engine, monitoring, secrets, topology
from provision.engine import File, HostContext, Packages, Service
from provision.ops import logs as ops
from provision.roles import ALL_ROLES, agent, logs, monitor
from provision.topology import Host, Topology
from tests.fabcli import run_fab

TOPOLOGIES = ["seed", "hardened"]
UTC = dt.UTC

pytestmark = pytest.mark.usefixtures("offline_roles")  # a test's own CA and certificates


def load(name: str) -> Topology:
    return topology.parse((topology.TOPOLOGY_DIR / f"{name}.yml").read_text(), f"{name}.yml")


def files_of(topo: Topology, host: Host) -> dict[str, File]:
    return {s.path: s for s in logs.steps(HostContext(topo, host, {})) if isinstance(s, File)}


def config_of(topo: Topology, host: Host) -> str:
    return files_of(topo, host)[monitoring.SYSLOG_CONFIG].data.decode()


def setting(text: str, name: str) -> list[str]:
    """Every value given to rsyslog parameter `name` (case-insensitive, as rsyslog reads)."""
    return re.findall(rf'(?<![\w.]){re.escape(name)}="([^"]*)"', text, flags=re.IGNORECASE)


# --------------------------------------------------------------------------- the topology


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_every_host_on_the_monitor_s_private_network_sends_and_the_client_does_not(
    name: str,
) -> None:
    topo = load(name)
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    senders = monitoring.log_senders(topo)
    assert {h.name for h in senders} == {
        h.name for h in topo if h is not mon and "private" in h.addresses
    }
    # The client shares the users' network with the monitor (its checks of the site as a
    # user), and still sends nothing: no flow lets it reach the monitor.
    assert "public" in topo.shared_networks(topo.with_role("client")[0], mon)
    assert not any(h.has_role("client") for h in senders)
    assert all(h in senders for h in topo.with_role("lb") + topo.with_role("web"))


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_the_firewall_lets_each_sender_reach_the_address_rsyslog_listens_on(name: str) -> None:
    topo = load(name)
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    port = topo.port("syslog-tls")
    paths = {
        (p.source.name, str(p.address))
        for p in topo.allowed_paths()
        if p.dest is mon and p.port == port and p.proto == "tcp"
    }
    expected = {
        (h.name, monitoring.syslog_target(topo, h))
        for h in topo
        if h is not mon and "private" in h.addresses
    }
    assert {a for _, a in paths} == {str(mon.addresses["private"])}
    assert paths == expected
    assert monitoring.syslog_listen_addresses(topo) == sorted({a for _, a in paths})


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_both_topologies_name_the_syslog_port_and_the_flow_to_the_monitor(name: str) -> None:
    doc = yaml.safe_load((topology.TOPOLOGY_DIR / f"{name}.yml").read_text())
    assert doc["ports"]["syslog-tls"] == 6514
    flows = [f for f in doc["flows"] if f.get("port") == "syslog-tls"]
    assert flows == [
        {
            "from": "any",
            "to": "monitor",
            "port": "syslog-tls",
            "proto": "tcp",
            "network": "private",
            "why": "logs shipped to the monitor (rsyslog over TLS)",
        }
    ]


# --------------------------------------------------------------------------- the role


def test_the_logs_role_runs_last_on_every_host() -> None:
    assert ALL_ROLES[-1] is logs.ROLE
    assert ALL_ROLES.index(logs.ROLE) == ALL_ROLES.index(agent.ROLE) + 1
    assert logs.ROLE.tier == "agent"
    assert {h.key for h in logs.ROLE.handlers} == {"restart rsyslog", "restart systemd-journald"}


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_the_client_gets_nothing(name: str) -> None:
    topo = load(name)
    for client in topo.with_role("client"):
        assert logs.steps(HostContext(topo, client, {})) == []


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_every_log_host_installs_rsyslog_with_tls_and_keeps_it_running(name: str) -> None:
    topo = load(name)
    for host in monitoring.reporting_hosts(topo):
        planned = logs.steps(HostContext(topo, host, {}))
        packages = [p for s in planned if isinstance(s, Packages) for p in s.packages]
        assert {"rsyslog", "rsyslog-gnutls", "logrotate"} <= set(packages)
        assert isinstance(planned[0], Packages)
        assert isinstance(planned[-1], Service) and planned[-1].unit == "rsyslog"
        found = files_of(topo, host)
        key = found[monitoring.SYSLOG_KEY_FILE]
        assert (key.mode, key.owner, key.group) == ("0600", "root", "root")
        assert found[monitoring.SYSLOG_CA_FILE].data == secrets.ca().cert_pem
        config = found[monitoring.SYSLOG_CONFIG]
        assert config.validate_in_place == "rsyslogd -N1"
        assert config.notify == ["restart rsyslog"]
        # Everything the config reads is written before it (rsyslogd -N1 opens the files).
        order = list(found)
        assert order.index(monitoring.SYSLOG_CONFIG) > max(
            order.index(p)
            for p in (
                monitoring.SYSLOG_CA_FILE,
                monitoring.SYSLOG_CERT_FILE,
                monitoring.SYSLOG_KEY_FILE,
            )
        )


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_journald_forwards_to_rsyslog(name: str) -> None:
    topo = load(name)
    for host in monitoring.reporting_hosts(topo):
        dropin = files_of(topo, host)[logs.JOURNALD_DROPIN]
        lines = dropin.data.decode().splitlines()
        assert "[Journal]" in lines and "ForwardToSyslog=yes" in lines
        assert dropin.notify == ["restart systemd-journald"]


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_a_sender_forwards_everything_over_verified_tls_with_a_disk_assisted_queue(
    name: str,
) -> None:
    topo = load(name)
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    for host in monitoring.log_senders(topo):
        text = config_of(topo, host)
        files = [t.file for t in logs.tailed(host)]
        # A balancer also keeps HAProxy's lines in their own file (omfile), after shipping.
        local = ["/var/log/haproxy.log"] if host.has_role("lb") else []
        assert setting(text, "type") == ["omfwd"] + ["omfile"] * len(local) + ["imfile"] * len(
            files
        )
        assert setting(text, "target") == [str(topo.address_for(host, mon))]
        assert setting(text, "port") == [str(topo.port("syslog-tls"))]
        assert setting(text, "protocol") == ["tcp"]
        assert setting(text, "StreamDriver") == ["gtls"]
        assert setting(text, "StreamDriverMode") == ["1"]
        assert setting(text, "StreamDriverAuthMode") == ["x509/name"]
        assert setting(text, "StreamDriverPermittedPeers") == [mon.name]
        assert setting(text, "template") == ["RSYSLOG_SyslogProtocol23Format"]
        assert setting(text, "queue.type") == ["LinkedList"]
        assert setting(text, "queue.filename") == [logs.QUEUE]
        assert setting(text, "queue.saveOnShutdown") == ["on"]
        assert setting(text, "queue.maxDiskSpace") == [logs.QUEUE_MAX_DISK]
        assert setting(text, "action.resumeRetryCount") == ["-1"]
        # Everything this host logs goes through the ruleset holding the forward, and the
        # files of programs that do not log to syslog are read into it.
        assert re.search(r"^call testbed-ship$", text, flags=re.MULTILINE)
        assert setting(text, "file") == local + files
        assert setting(text, "ruleset") == ["testbed-ship"] * len(files)
        assert "imtcp" not in text  # a sender listens on nothing


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_the_firewall_s_drops_everywhere_and_nginx_s_files_on_web_servers_are_read(
    name: str,
) -> None:
    """ulogd2 and Debian's nginx write files, not syslog: rsyslog reads them, tagged with
    the program name `fab logs --unit` matches."""
    topo = load(name)
    for host in monitoring.reporting_hosts(topo):
        text = config_of(topo, host)
        wanted = {logs.ULOGD_FILE: "ulogd:"}
        if host.has_role("web"):
            wanted |= {logs.NGINX_ACCESS_LOG: "nginx:", logs.NGINX_ERROR_LOG: "nginx:"}
        assert (
            dict(zip(setting(text, "file")[-len(wanted) :], setting(text, "tag"), strict=True))
            == wanted
        )
        assert len(re.findall(r'^module\(load="imfile"\)$', text, flags=re.MULTILINE)) == 1


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_the_tls_files_are_set_once_per_config(name: str) -> None:
    """rsyslog takes the global TLS settings once: every config sets each exactly once."""
    topo = load(name)
    for host in monitoring.reporting_hosts(topo):
        text = config_of(topo, host)
        assert len(re.findall(r"^global\(", text, flags=re.MULTILINE)) == 1
        assert setting(text, "DefaultNetstreamDriver") == ["gtls"]
        assert setting(text, "DefaultNetstreamDriverCAFile") == [monitoring.SYSLOG_CA_FILE]
        assert setting(text, "DefaultNetstreamDriverCertFile") == [monitoring.SYSLOG_CERT_FILE]
        assert setting(text, "DefaultNetstreamDriverKeyFile") == [monitoring.SYSLOG_KEY_FILE]


def _usages(pem: bytes) -> list[x509.ObjectIdentifier]:
    cert = x509.load_pem_x509_certificate(pem)
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _dns(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_senders_show_their_own_client_certificate_and_the_monitor_its_server_one(
    name: str,
) -> None:
    topo = load(name)
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    for host in monitoring.log_senders(topo):
        cert = files_of(topo, host)[monitoring.SYSLOG_CERT_FILE].data
        assert _dns(cert) == [host.name]
        assert _usages(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = files_of(topo, mon)[monitoring.SYSLOG_CERT_FILE].data
    # The very certificate Prometheus shows, naming the monitor (the senders' permitted peer).
    assert cert == monitor.certificate(topo, mon).cert_pem
    assert mon.name in _dns(cert)
    assert _usages(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_the_monitor_takes_tls_clients_with_a_ca_certificate_on_its_private_address_only(
    name: str,
) -> None:
    topo = load(name)
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    text = config_of(topo, mon)
    assert setting(text, "StreamDriver.Name") == ["gtls"]
    assert setting(text, "StreamDriver.Mode") == ["1"]
    assert setting(text, "StreamDriver.AuthMode") == ["x509/certvalid"]
    imtcp = r'^input\(type="imtcp" address="([^"]+)" port="(\d+)" ruleset="([^"]+)"\)$'
    inputs = re.findall(imtcp, text, flags=re.MULTILINE)
    private = sorted({str(topo.address_for(h, mon)) for h in monitoring.log_senders(topo)})
    assert inputs == [(a, str(topo.port("syslog-tls")), "testbed-remote") for a in private]
    assert all(a in {str(x) for x in mon.addresses.values()} for a, _, _ in inputs)
    # One file per sending host, by the name in its messages; its own logs beside them.
    assert f'string="{monitoring.LOG_DIR}/%HOSTNAME:::secpath-replace%.log"' in text
    assert setting(text, "file") == [monitoring.log_file(mon.name), logs.ULOGD_FILE]
    assert setting(text, "ruleset") == ["testbed-remote", "testbed-ship"]
    assert setting(text, "template").count("RSYSLOG_FileFormat") == 2
    assert "omfwd" not in text  # the monitor forwards to nobody


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_the_monitor_rotates_the_remote_logs_daily_and_keeps_a_week(name: str) -> None:
    topo = load(name)
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    rotate = files_of(topo, mon)[logs.LOGROTATE]
    words = [line.split() for line in rotate.data.decode().splitlines()]
    assert [f"{monitoring.LOG_DIR}/*.log"] in words
    assert ["daily"] in words and ["rotate", "7"] in words and ["compress"] in words
    assert rotate.validate is not None and rotate.validate.startswith("logrotate -d {path}")
    assert all(logs.LOGROTATE not in files_of(topo, h) for h in monitoring.log_senders(topo))


def test_a_deploy_renders_the_same_logs_files_twice() -> None:
    """Idempotence: certificates are kept, so nothing changes on a second deploy."""
    topo = load("seed")
    for host in monitoring.reporting_hosts(topo):
        first = {p: f.data for p, f in files_of(topo, host).items()}
        assert first == {p: f.data for p, f in files_of(topo, host).items()}


# --------------------------------------------------------------------------- fab logs: parsing

NOW = dt.datetime(2026, 11, 29, 16, 48, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - dt.timedelta(seconds=30)),
        ("10m", NOW - dt.timedelta(minutes=10)),
        ("2h", NOW - dt.timedelta(hours=2)),
        ("1d", NOW - dt.timedelta(days=1)),
        (" 5M ", NOW - dt.timedelta(minutes=5)),
        ("2026-11-29T16:00:00Z", dt.datetime(2026, 11, 29, 16, 0, tzinfo=UTC)),
        ("2026-11-29T18:00:00+02:00", dt.datetime(2026, 11, 29, 16, 0, tzinfo=UTC)),
        ("2026-11-29T16:00:00", dt.datetime(2026, 11, 29, 16, 0, tzinfo=UTC)),
        ("all", None),
        ("", None),
    ],
)
def test_since_is_a_duration_a_time_or_all(text: str, expected: dt.datetime | None) -> None:
    assert ops.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["10", "m", "10w", "-5m", "yesterday", "10 minutes"])
def test_a_bad_since_is_refused_saying_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        ops.parse_since(text, NOW)


@pytest.mark.parametrize(
    ("line", "stamp", "tag", "program", "message"),
    [
        # The monitor's own lines, through its local socket: the tag ends with a colon.
        ("2026-11-29T16:48:01.123456+00:00 monitor sshd[812]: Accepted publickey for x",
         "2026-11-29T16:48:01.123456+00:00", "sshd[812]:", "sshd", "Accepted publickey for x"),
        # A sender's lines arrive as RFC 5424 (app name and process id): no colon.
        ("2026-11-29T16:48:01.5+00:00 web1 nginx[77] 10.0.0.1 - - \"GET / HTTP/1.1\" 200",
         "2026-11-29T16:48:01.5+00:00", "nginx[77]", "nginx", '10.0.0.1 - - "GET / HTTP/1.1" 200'),
        ("2026-11-29T16:48:01Z web1 testbed-probe marker-1", "2026-11-29T16:48:01Z",
         "testbed-probe", "testbed-probe", "marker-1"),
        ("2026-11-29T16:48:01+00:00 lb1 ulogd fw-drop lb1: IN=eth1 DPT=3306",
         "2026-11-29T16:48:01+00:00", "ulogd", "ulogd", "fw-drop lb1: IN=eth1 DPT=3306"),
        ("2026-11-29T16:48:01+00:00 web2 kernel: oops: a: b", "2026-11-29T16:48:01+00:00",
         "kernel:", "kernel", "oops: a: b"),
        # No tag at all: rsyslog writes two spaces.
        ("2026-11-29T16:48:01+00:00 web2  bare message", "2026-11-29T16:48:01+00:00", "", "",
         "bare message"),
    ],
)  # fmt: skip
def test_a_line_splits_into_time_tag_program_and_message(
    line: str, stamp: str, tag: str, program: str, message: str
) -> None:
    parsed = ops.parse_line("h", line)
    assert (parsed.stamp, parsed.tag, parsed.program, parsed.message) == (
        stamp,
        tag,
        program,
        message,
    )
    assert parsed.when is not None and parsed.when.tzinfo is not None


def test_timestamps_compare_in_utc_whatever_their_zone() -> None:
    east = ops.parse_line("a", "2026-11-29T18:48:01+02:00 a x: y").when
    zulu = ops.parse_line("b", "2026-11-29T16:48:01Z b x: y").when
    assert east == zulu == dt.datetime(2026, 11, 29, 16, 48, 1, tzinfo=UTC)


@pytest.mark.parametrize("line", ["", "garbage", "Nov 29 16:48:01 web1 sshd[1]: old format"])
def test_a_line_without_an_rfc3339_timestamp_is_kept_whole(line: str) -> None:
    parsed = ops.parse_line("web1", line)
    assert parsed.when is None and parsed.message == line and parsed.tag == ""


def test_filters_since_unit_and_grep() -> None:
    line = ops.parse_line("web1", "2026-11-29T16:48:01.000001+00:00 web1 nginx[7]: GET /api 502")
    at = dt.datetime(2026, 11, 29, 16, 48, 1, 1, tzinfo=UTC)
    assert ops.matches(line)
    assert ops.matches(line, since=at)  # at the cutoff: kept
    assert not ops.matches(line, since=at + dt.timedelta(microseconds=1))
    assert ops.matches(line, unit="nginx") and ops.matches(line, unit="nginx.service")
    assert not ops.matches(line, unit="ngin") and not ops.matches(line, unit="haproxy")
    assert ops.matches(line, pattern=re.compile(r" 5\d\d$"))
    # --grep searches the message, not the host or the tag.
    assert not ops.matches(line, pattern=re.compile("web1|nginx"))
    undated = ops.parse_line("web1", "no timestamp here")
    assert ops.matches(undated) and not ops.matches(undated, since=at)


def test_the_remote_cutoff_leaves_a_margin_for_every_time_zone() -> None:
    assert ops.remote_prefix(None) == ""
    assert ops.remote_prefix(NOW) == "2026-11-29T02:48:00"
    # A line written at UTC+14 just after the cutoff still passes the text comparison.
    ahead = (NOW + dt.timedelta(hours=14)).strftime("%Y-%m-%dT%H:%M:%S")
    behind = (NOW - dt.timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%S")
    assert ahead >= ops.remote_prefix(NOW) and behind >= ops.remote_prefix(NOW)


def test_the_output_is_merged_oldest_first_and_shown_prefixed_by_host() -> None:
    text = (
        "web2\t2026-11-29T16:48:03+00:00 web2 nginx[2]: third\n"
        "web1\t2026-11-29T16:48:01+00:00 web1 nginx[1]: first\n"
        "monitor\t2026-11-29T18:48:02+02:00 monitor sshd[3]: second\n"
        "not a line of the remote command\n"
    )
    lines = ops.parse_output(text)
    assert [line.message for line in lines] == ["first", "second", "third"]
    assert lines[0].show(7) == "web1     2026-11-29T16:48:01+00:00 nginx[1]: first"


@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk on this machine")
def test_the_remote_command_keeps_recent_lines_and_names_each_file_s_host(tmp_path: Path) -> None:
    (tmp_path / "web1.log").write_text(
        "2026-11-28T10:00:00.000000+00:00 web1 nginx[1]: a day old\n"
        "2026-11-29T16:40:00.000000+00:00 web1 nginx[1]: recent\n"
    )
    (tmp_path / "monitor.log").write_text("2026-11-29T16:47:00Z monitor sshd[2]: newest\n")
    files = [str(tmp_path / "web1.log"), str(tmp_path / "monitor.log")]
    since = NOW - dt.timedelta(minutes=10)
    out = subprocess.run(
        ["sh", "-c", ops.remote_command(files, since)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == [
        "web1\t2026-11-29T16:40:00.000000+00:00 web1 nginx[1]: recent",
        "monitor\t2026-11-29T16:47:00Z monitor sshd[2]: newest",
    ]
    everything = subprocess.run(
        ["sh", "-c", ops.remote_command(files, None)], capture_output=True, text=True, check=True
    ).stdout
    assert len(everything.splitlines()) == 3


# --------------------------------------------------------------------------- fab logs: errors


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--host", "client"], "--host client: it shares no network with the monitor"),
        (["--host", "web9"], "--host web9: no such host in the topology"),
        (["--since", "yesterday"], "--since 'yesterday': expected a duration"),
        (["--grep", "("], "--grep '(': not a valid regular expression"),
    ],
)
def test_fab_logs_refuses_bad_input_before_connecting(args: list[str], says: str) -> None:
    res = run_fab("logs", "--inventory", "/dev/null", *args)
    assert res.returncode == 2
    assert f"logs: {says}" in res.stderr


def test_fab_logs_names_the_monitor_and_the_step_when_it_cannot_connect(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    inventory = tmp_path / "inventory.yml"
    hosts = {h.name: {"host": "127.0.0.1", "port": port} for h in topology.load("seed")}
    inventory.write_text(yaml.safe_dump({"hosts": hosts}))
    res = run_fab("logs", "--inventory", str(inventory))
    assert res.returncode == 2
    assert "logs: monitor: cannot connect over SSH to read /var/log/remote" in res.stderr


class _LocalRemote:
    """Stands for the monitor's Remote: runs the commands on this machine."""

    def __init__(self, host: Host, endpoint: object) -> None:
        self.host = host

    def __enter__(self) -> _LocalRemote:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, command: str, check: bool = True) -> engine.CommandResult:
        res = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
        return engine.CommandResult(res.returncode, res.stdout, res.stderr)

    def output_bytes(self, command: str) -> bytes:
        return subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout


@pytest.fixture
def local_monitor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`fab logs` against a folder of this machine instead of the monitor's /var/log/remote."""
    folder = tmp_path / "remote"
    folder.mkdir()
    monkeypatch.setattr(monitoring, "LOG_DIR", str(folder))
    monkeypatch.setattr(ops.engine, "Remote", _LocalRemote)
    monkeypatch.setattr(ops, "endpoints", lambda topo, inventory: {h.name: None for h in topo})
    return folder


@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk on this machine")
def test_logs_reads_filters_and_prints_by_host(local_monitor: Path) -> None:
    now = dt.datetime.now(UTC)
    recent = (now - dt.timedelta(minutes=1)).isoformat(timespec="microseconds")
    old = (now - dt.timedelta(hours=3)).isoformat(timespec="microseconds")
    (local_monitor / "web1.log").write_text(
        f"{old} web1 nginx[1]: GET /old 200\n"
        f"{recent} web1 nginx[1]: GET /api 502\n"
        f"{recent} web1 sshd[2]: Accepted publickey for vagrant\n"
    )
    later = (now - dt.timedelta(seconds=30)).isoformat(timespec="microseconds")
    (local_monitor / "monitor.log").write_text(f"{later} monitor sshd[3]: Accepted publickey\n")
    (local_monitor / "web1.log.1").write_text(f"{recent} web1 nginx[1]: rotated, not read\n")
    shown: list[str] = []
    assert ops.logs("seed", None, out=shown.append) == 3
    assert [line.split()[0] for line in shown] == ["web1", "web1", "monitor"]
    shown.clear()
    assert ops.logs("seed", None, host="web1", unit="nginx", since="all", out=shown.append) == 2
    assert ops.logs("seed", None, grep=r" 5\d\d$", out=shown.append) == 1
    assert shown[-1] == f"web1  {recent} nginx[1]: GET /api 502"


def test_logs_names_the_monitor_when_a_host_has_no_file_yet(local_monitor: Path) -> None:
    (local_monitor / "web1.log").write_text("")
    with pytest.raises(ops.TaskError, match=r"^monitor: no .*/web2\.log yet"):
        ops.logs("seed", None, host="web2")


def test_logs_names_the_monitor_when_it_has_no_log_folder(local_monitor: Path) -> None:
    local_monitor.rmdir()
    with pytest.raises(ops.TaskError, match=r"^monitor: no .*: is the logs role deployed"):
        ops.logs("seed", None)


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_haproxy_s_request_lines_are_shipped_before_anything_stops_them(name: str) -> None:
    """Debian's haproxy package stops its lines in /var/log/haproxy.log (49-haproxy.conf,
    read before ours): they never reached the monitor. The deploy's version keeps only the
    chroot's socket; the local file is written after the ship, by the sender's config."""
    topo = load(name)
    for host in topo.with_role("lb"):
        ours = files_of(topo, host)["/etc/rsyslog.d/49-haproxy.conf"].data.decode()
        rules = [line for line in ours.splitlines() if line and not line.startswith("#")]
        assert rules == ["$AddUnixListenSocket /var/lib/haproxy/dev/log"]
        text = config_of(topo, host)
        ship = text.index("\ncall testbed-ship\n")
        local = text.index(':programname, startswith, "haproxy"')
        assert ship < local and "stop" in text[local:]
    for host in topo:
        if not host.has_role("lb") and host in monitoring.log_senders(topo):
            assert "/etc/rsyslog.d/49-haproxy.conf" not in files_of(topo, host)
            assert "haproxy" not in config_of(topo, host)
