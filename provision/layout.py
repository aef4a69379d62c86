"""The one owner of every value that is the same on all machines and is not a flow:
loopback endpoints, account and database names, the units each role runs.

Ports that cross the network belong to the topology file (`ports:`), because the
firewall opens them; everything here listens on loopback only, so the firewall never
names it. Roles, operator commands, bench/ and the tests read these constants, and no
role imports another to borrow one.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- loopback endpoints

APP_LISTEN = "127.0.0.1:8000"
"""gunicorn (the app): nginx proxies to it; the monitoring agent scrapes its /metrics."""
DB_WRITER_LISTEN = "127.0.0.1:3307"
"""The app host's local HAProxy that sends writes to the one writable database node."""
DB_READER_LISTEN = "127.0.0.1:3308"
"""The same for reads: the local node first, any applying node after."""
NGINX_STATUS_LISTEN = "127.0.0.1:8081"
"""nginx stub_status, read by the nginx exporter."""
NODE_EXPORTER_LISTEN = "127.0.0.1:9100"
NGINX_EXPORTER_LISTEN = "127.0.0.1:9113"
MYSQLD_EXPORTER_LISTEN = "127.0.0.1:9104"
AGENT_LISTEN = "127.0.0.1:9091"
"""Prometheus in agent mode on every host (scrapes the exporters, pushes to the monitor)."""
ALERTMANAGER_LISTEN = "127.0.0.1:9093"
ALERT_RECEIVER_LISTEN = "127.0.0.1:9095"
"""The monitor's webhook receiver: keeps the alerts Alertmanager sent, for the tests."""
MTAIL_LISTEN = "127.0.0.1:3903"
"""mtail on the monitor: metrics it derives from the central logs (docs/monitoring.md)."""
BLACKBOX_LISTEN = "127.0.0.1:9115"
"""The blackbox exporter on the monitor: the synthetic checks (monitoring.probes)."""
NODE_TEXTFILES = "/var/lib/prometheus/node-exporter"
"""node_exporter's textfile directory on every host (the site certificate's expiry, on lb)."""
CERT_EXPIRY_TEXTFILE = f"{NODE_TEXTFILES}/tls.prom"
SNMP_EXPORTER_LISTEN = "127.0.0.1:9116"
"""snmp_exporter on the monitor: polls every host's snmpd (monitoring.snmp_targets)."""


def port_of(listen: str) -> int:
    """ "127.0.0.1:8000" -> 8000."""
    return int(listen.rsplit(":", 1)[1])


def host_of(listen: str) -> str:
    """ "127.0.0.1:8000" -> "127.0.0.1"."""
    return listen.rsplit(":", 1)[0]


# --------------------------------------------------------------------------- database names

DATABASE = "testbed"
APP_USER = "app"
"""The app's account: INSERT and SELECT on DATABASE, from the app hosts only."""
FAILOVER_USER = "failover"
"""dbwatch's account on the monitor (automatic failover)."""
REPL_USER = "repl"
DBWATCH_TOKEN = "dbwatch-token"
"""The secret (provision/secrets.py) dbwatch shows the agents to renew a lease or fence."""
DBWATCH_STATE = "/var/lib/dbwatch/state.json"
"""Where dbwatch keeps the primary it follows and its epoch."""

# --------------------------------------------------------------------------- units

UNITS_BY_ROLE: dict[str, tuple[str, ...]] = {
    "common": ("ssh",),
    "lb": ("haproxy",),
    "web": ("nginx",),
    "app": ("testbed-app", "db-writer"),
    "db-primary": ("mariadb", "dbcheck"),
    "db-replica": ("mariadb", "dbcheck"),
    "monitor": ("prometheus", "prometheus-alertmanager", "alert-receiver"),
    "client": (),
}
"""The systemd units a host of each role runs once deployed (`fab status` reads them)."""


# Database TLS (topology option `db_tls`): where each db node keeps its certificate, and
# where every host that connects to MariaDB over TCP (app hosts, the monitor) keeps the CA.
DB_TLS_DIR = "/etc/mysql/tls"
DB_CLIENT_CA = "/etc/webinfra-testbed/db-ca.crt"

# ----------------------------------------------------------------- kernel network settings

# The same on every machine. A docker machine gets them when it is created (`--sysctl`:
# its /proc/sys is read-only from inside); a VM from /etc/sysctl.d, written by the firewall
# role. IPv6 is on (link-local only, no IPv6 flows) so its firewall is exercised for real.
NET_SYSCTLS = {
    # Reverse-path filtering, strict: a packet whose source would not be routed back out of
    # the interface it came in on (a spoofed source) is dropped.
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.conf.default.log_martians": "1",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
    "net.ipv6.conf.all.disable_ipv6": "0",
    "net.ipv6.conf.default.disable_ipv6": "0",
}
# Not here: net.ipv4.conf.*.forwarding = 0. Writing it resets accept_redirects (the
# kernel's inet_forward_change), docker applies --sysctl values in no fixed order and a
# container cannot write them afterwards, so half the machines came up accepting
# redirects. No machine routes anyway: every firewall's FORWARD policy is DROP.
SYSCTL_FILE = "/etc/sysctl.d/60-webinfra-testbed.conf"


# ------------------------------------------------------------ packages every host installs

BASE_PACKAGES = ("ca-certificates", "curl", "netcat-openbsd", "procps", "tzdata", "less")
"""The common role's tools (curl for health checks, nc for probes, ps, time zones)."""
HARDENING_PACKAGES = ("libpam-pwquality", "debsums", "libpam-tmpdir")
"""The common role's host hardening: password quality, package checksums, private TMPDIR."""
FIREWALL_PACKAGES = ("iptables", "iptables-persistent", "netfilter-persistent", "ulogd2")
"""The firewall role's: the rules, restored at boot, and dropped packets logged."""
EVERY_HOST_PACKAGES = (*BASE_PACKAGES, *HARDENING_PACKAGES, *FIREWALL_PACKAGES)
"""What the first roles install on every machine. The docker box has them already
(provision/box.py), so a first deploy there only checks them; on a VM from the stock box
the roles install them as they always did."""
