"""The `logs` role: every host's logs on the monitor, shipped by rsyslog over TLS.

On every host that shares a network with the monitor (the hosts that report metrics too;
the outside client does not), journald forwards to rsyslog, which sends everything, and
the files of the programs that do not log to syslog (ulogd2: the firewall's drops; nginx),
to rsyslog on the monitor over TCP with TLS, showing a client certificate from the
internal CA and accepting only the monitor's certificate; a disk-assisted queue keeps what
the monitor cannot take yet. The monitor's rsyslog takes them from such clients only, on
the addresses the senders use, and writes /var/log/remote/<host>.log, its own logs
included, rotated daily, a week kept. `fab logs` reads them (provision/ops/logs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provision import monitoring, secrets
from provision.engine import (
    File,
    HostContext,
    Packages,
    Role,
    Service,
    Step,
    render,
    restart_handler,
)
from provision.topology import Host, Topology

JOURNALD_DROPIN = "/etc/systemd/journald.conf.d/60-webinfra-testbed.conf"
LOGROTATE = "/etc/logrotate.d/webinfra-testbed-remote"
ULOGD_FILE = "/var/log/ulog/syslogemu.log"
"""Where ulogd2's default stack writes the firewall's dropped packets (firewall role)."""
NGINX_ACCESS_LOG = "/var/log/nginx/access.log"
NGINX_ERROR_LOG = "/var/log/nginx/error.log"
"""Debian's nginx.conf logs to these files, not to syslog (the web role keeps its defaults)."""
QUEUE = "testbed-to-monitor"
"""The disk-assisted queue's files, in rsyslog's work directory (/var/spool/rsyslog)."""
QUEUE_MAX_DISK = "256m"
RESUME_INTERVAL = 2
"""Seconds between two tries to reach the monitor again (rsyslog's default, 30, would
leave the logs of a monitor that came back waiting half a minute)."""
KEEP_DAYS = 7
DYNAFILE_CACHE = 100
"""Files the monitor keeps open at once, one per sending host (rsyslog's default: 10)."""


def journald_dropin() -> str:
    """Debian's journald forwards to syslog by default; this says so whatever the machine's
    own journald.conf says (a real server's may have turned it off)."""
    return (
        "# Managed by webinfra-testbed (provision/roles/logs): rsyslog ships what journald "
        "gets.\n[Journal]\nForwardToSyslog=yes\n"
    )


@dataclass(frozen=True)
class Tailed:
    """A file rsyslog reads (imfile) because its program does not write to syslog."""

    file: str
    tag: str
    """The syslog tag its lines get, the program name `fab logs --unit` matches."""
    facility: str
    severity: str


HAPROXY_RSYSLOG = "/etc/rsyslog.d/49-haproxy.conf"
HAPROXY_RSYSLOG_TEXT = """\
# Managed by webinfra-testbed (provision/roles/logs): haproxy's package file, changed.
# HAProxy runs chrooted and logs to this socket inside the chroot. Debian's version then
# writes its lines to /var/log/haproxy.log and stops them there, before
# 60-webinfra-testbed.conf could ship them to the monitor; that rule moved into that file,
# after the shipping.
$AddUnixListenSocket /var/lib/haproxy/dev/log
"""
HAPROXY_LOCAL_LOG = "/var/log/haproxy.log"


def tailed(host: Host) -> list[Tailed]:
    """The files `host`'s rsyslog reads and ships: the firewall's drops on every host,
    nginx's logs on a web server."""
    found = [Tailed(ULOGD_FILE, "ulogd", "kern", "warning")]
    if host.has_role("web"):
        found += [
            Tailed(NGINX_ACCESS_LOG, "nginx", "local7", "info"),
            Tailed(NGINX_ERROR_LOG, "nginx", "local7", "error"),
        ]
    return found


def config(topo: Topology, host: Host) -> str:
    """/etc/rsyslog.d/60-webinfra-testbed.conf for `host`: the monitor's or a sender's."""
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    files: dict[str, Any] = {
        "ca": monitoring.SYSLOG_CA_FILE,
        "cert": monitoring.SYSLOG_CERT_FILE,
        "key": monitoring.SYSLOG_KEY_FILE,
        "port": topo.port("syslog-tls"),
        "tailed": tailed(host),
        "host": host,
        "haproxy_log": HAPROXY_LOCAL_LOG if host.has_role("lb") else None,
    }
    if host is mon:
        return render(
            "logs",
            "rsyslog-monitor.conf.j2",
            **files,
            log_dir=monitoring.LOG_DIR,
            own_file=monitoring.log_file(host.name),
            addresses=monitoring.syslog_listen_addresses(topo),
            cache=DYNAFILE_CACHE,
        )
    return render(
        "logs",
        "rsyslog-sender.conf.j2",
        **files,
        target=monitoring.syslog_target(topo, host),
        peer=mon.name,
        queue=QUEUE,
        max_disk=QUEUE_MAX_DISK,
        resume_interval=RESUME_INTERVAL,
    )


def certificate(topo: Topology, host: Host) -> secrets.KeyPair:
    """The monitor shows its server certificate (the one Prometheus shows, naming it); a
    sender its own client certificate (clientAuth only)."""
    if host is monitoring.monitor_host(topo):
        return monitoring.server_certificate(topo, host)
    return secrets.leaf(f"syslog-{host.name}", [host.name], [], client=True)


def steps(ctx: HostContext) -> list[Step]:
    topo, host = ctx.topology, ctx.host
    if host not in monitoring.reporting_hosts(topo):
        return []
    receiving = host is monitoring.monitor_host(topo)
    pair = certificate(topo, host)
    restart = ["restart rsyslog"]
    result: list[Step] = [
        # logrotate: what rsyslog's package recommends (the deploy installs no
        # recommends), without which Debian's own /var/log files would grow for ever.
        Packages(
            ("rsyslog", "rsyslog-gnutls", "logrotate"),
            name="Ensure rsyslog, its TLS driver and logrotate are installed.",
        ),
        # Its timer runs it daily; the deploy installs packages without starting their
        # units, so it is started here like every service the roles rely on.
        Service("logrotate.timer", name="Ensure logs are rotated daily (logrotate's timer)."),
        File(
            JOURNALD_DROPIN,
            journald_dropin(),
            notify=["restart systemd-journald"],
            name="Ensure journald forwards every message to rsyslog.",
        ),
        File(
            monitoring.SYSLOG_CA_FILE,
            secrets.ca().cert_pem,
            notify=restart,
            name="Ensure the testbed CA is installed for rsyslog.",
        ),
        File(
            monitoring.SYSLOG_CERT_FILE,
            pair.cert_pem,
            notify=restart,
            name="Ensure rsyslog's certificate is installed"
            + (" (the monitor's)." if receiving else f" (syslog-{host.name}, a client's)."),
        ),
        File(
            monitoring.SYSLOG_KEY_FILE,
            pair.key_pem,
            mode="0600",
            notify=restart,
            name="Ensure rsyslog's private key is installed (0600).",
        ),
        File(
            monitoring.SYSLOG_CONFIG,
            config(topo, host),
            # rsyslogd checks its whole configuration (the main file includes this one)
            # with the new file in place; on failure the old one is put back.
            validate_in_place="rsyslogd -N1",
            notify=restart,
            name=(
                "Ensure rsyslog takes every host's logs over TLS into "
                f"{monitoring.LOG_DIR}/<host>.log."
                if receiving
                else "Ensure rsyslog ships every log to the monitor over TLS."
            ),
        ),
    ]
    if host.has_role("lb"):
        result.insert(
            -1,
            File(
                HAPROXY_RSYSLOG,
                HAPROXY_RSYSLOG_TEXT,
                validate_in_place="rsyslogd -N1",
                notify=restart,
                name="Ensure HAProxy's request lines are shipped too (not stopped locally).",
            ),
        )
    if receiving:
        result.append(
            File(
                LOGROTATE,
                render("logs", "logrotate.j2", log_dir=monitoring.LOG_DIR, keep=KEEP_DAYS),
                # logrotate -d exits 0 even on an unknown directive: fail on what it calls
                # an error.
                validate="logrotate -d {path} 2>&1 | ( ! grep '^error:' )",
                name=f"Ensure {monitoring.LOG_DIR} is rotated daily, a week kept.",
            )
        )
    result.append(Service("rsyslog", name="Ensure rsyslog is running."))
    return result


ROLE = Role(
    "logs",
    "agent",
    steps,
    handlers=[restart_handler("systemd-journald"), restart_handler("rsyslog")],
)
