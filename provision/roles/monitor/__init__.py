"""The `monitor` role: central Prometheus, Alertmanager, the alert recorder, the dashboard.

Prometheus (Debian's 2.42) receives the agents' samples (remote write), scrapes this
host's own exporters, keeps a day of data, evaluates the recording and alerting rules
(templates/rules.yml.j2) and sends alerts to Alertmanager, which sends them to the
alert recorder (files/alert-receiver.py). The dashboard is a Prometheus console
template, /consoles/testbed.html.
"""

from __future__ import annotations

from provision import dbcluster, layout, monitoring, secrets, site
from provision.engine import (
    Command,
    File,
    HostContext,
    Packages,
    Role,
    Service,
    Step,
    reload_handler,
    render,
    restart_handler,
    role_script,
)
from provision.engine.steps import ROLES_DIR
from provision.topology import Host, Topology

RETENTION = "1d"
RECEIVER_SCRIPT = "/usr/local/lib/webinfra-testbed/alert-receiver.py"
EXAMPLES = "/usr/share/doc/prometheus/examples"


MTAIL_PROGRAMS = ("haproxy.mtail", "nginx.mtail", "sshd.mtail", "firewall.mtail")
"""Log parsing (files/mtail/): metrics from the central logs every host ships here."""
MTAIL_LOGS = "/var/log/remote/*.log"
MTAIL_CHECK = (
    # mtail compiles only files named *.mtail: check a copy with that name.
    'd=$(mktemp -d) && cp {path} "$d/check.mtail" && '
    'mtail --compile_only --progs "$d/check.mtail"; r=$?; rm -rf "$d"; exit $r'
)


def probe_jobs(topo: Topology) -> dict[str, list[monitoring.Probe]]:
    """monitoring.probes by blackbox module: one scrape job each."""
    jobs: dict[str, list[monitoring.Probe]] = {}
    for probe in monitoring.probes(topo):
        jobs.setdefault(probe.module, []).append(probe)
    return jobs


def mtail_steps(topo: Topology) -> list[Step]:
    """mtail reads every host's log file as rsyslog writes it and exports what it counts on
    loopback, for this host's Prometheus (monitoring.targets)."""
    host, port = layout.host_of(layout.MTAIL_LISTEN), layout.port_of(layout.MTAIL_LISTEN)
    return [
        *(
            File(
                f"/etc/mtail/{program}",
                (ROLES_DIR / "monitor" / "files" / "mtail" / program).read_text(),
                validate=MTAIL_CHECK,
                notify=["restart mtail"],
                name=f"Ensure the log parser {program} is up to date.",
            )  # fmt: skip
            for program in MTAIL_PROGRAMS
        ),
        Command(
            "Ensure mtail may read the central logs (group adm, like the files).",
            check='id -nG mtail | grep -qw adm && [ "$(stat -c %G /var/log/remote)" = adm ]',
            run="usermod -aG adm mtail && install -d -m 0750 -o root -g adm /var/log/remote",
            notify=["restart mtail"],
        ),
        File(
            "/etc/default/mtail",
            "# Managed by webinfra-testbed (provision/roles/monitor).\n"
            f"LOGS='{MTAIL_LOGS}'\nHOST={host}\nPORT={port}\nEXTRA_ARGS=\n",
            notify=["restart mtail"],
            name="Ensure mtail reads the central logs and answers on loopback only.",
        ),
        Service("mtail", name="Ensure mtail is running."),
    ]


BLACKBOX_CONFIG = "/etc/prometheus/blackbox.yml"
BLACKBOX_CA = "/etc/prometheus/blackbox-site-ca.crt"
"""The site's CA (the one users import, name-constrained to the testbed's names), which the
site's certificate must chain to for a site check to pass."""


def blackbox_steps(topo: Topology) -> list[Step]:
    """The blackbox exporter: synthetic checks of what the monitor can reach, run when
    Prometheus scrapes /probe (its jobs come from monitoring.probes)."""
    return [
        File(BLACKBOX_CA, site.authority(topo).cert_pem,
             notify=["restart prometheus-blackbox-exporter"],
             name="Ensure the blackbox exporter trusts the site's CA (and only it)."),
        *_exporter(
            "prometheus-blackbox-exporter", "the blackbox exporter", layout.BLACKBOX_LISTEN,
            File(BLACKBOX_CONFIG,
                 render("monitor", "blackbox.yml.j2", site=topo.site.names[0],
                        ca_file=BLACKBOX_CA),
                 validate="prometheus-blackbox-exporter --config.check --config.file {path}",
                 notify=["restart prometheus-blackbox-exporter"],
                 name="Ensure the synthetic checks (blackbox modules) are up to date."),
        ),
    ]  # fmt: skip


def _exporter(unit: str, what: str, listen: str, config: File) -> list[Step]:
    """One of the monitor's exporters: its config (which restarts it when it changes), its
    arguments (that config, and an address on loopback only), and the unit running."""
    return [
        config,
        File(f"/etc/default/{unit}",
             _default(f"--config.file={config.path} --web.listen-address={listen}"),
             notify=[f"restart {unit}"], name=f"Ensure {what} answers on loopback only."),
        Service(unit, name=f"Ensure {what} is running."),
    ]  # fmt: skip


SNMP_CONFIG = "/etc/prometheus/snmp.yml"


def snmp_client_config() -> str:
    """root's defaults for the net-snmp tools on the monitor: `snmpget HOST OID` asks as the
    testbed's SNMPv3 user, with no password on a command line (monitoring.SNMP_CLIENT_CONFIG)."""
    user = monitoring.snmp_user()
    return (
        "# Managed by webinfra-testbed (provision/roles/monitor): the monitor asks as the\n"
        "# testbed's SNMPv3 user (authPriv) unless a command line says otherwise.\n"
        f"defVersion 3\ndefSecurityName {user.name}\ndefSecurityLevel authPriv\n"
        f"defAuthType {monitoring.SNMP_AUTH[0]}\ndefAuthPassphrase {user.auth_password}\n"
        f"defPrivType {monitoring.SNMP_PRIV[0]}\ndefPrivPassphrase {user.priv_password}\n"
    )


def snmp_steps() -> list[Step]:
    """snmp_exporter: polls every host's snmpd as the testbed's SNMPv3 user when Prometheus
    scrapes /snmp (its job lists monitoring.snmp_targets)."""
    return [
        File(monitoring.SNMP_CLIENT_CONFIG, snmp_client_config(), mode="0600",
             name="Ensure root on the monitor asks over SNMPv3 as the testbed's user (0600)."),
        *_exporter(
            "prometheus-snmp-exporter", "snmp_exporter", layout.SNMP_EXPORTER_LISTEN,
            File(SNMP_CONFIG,
                 render("monitor", "snmp.yml.j2", module=monitoring.SNMP_MODULE,
                        user=monitoring.snmp_user(), auth=monitoring.SNMP_AUTH[1],
                        priv=monitoring.SNMP_PRIV[1]),
                 mode="0640", group="prometheus",
                 validate="prometheus-snmp-exporter --dry-run --config.file={path}",
                 notify=["restart prometheus-snmp-exporter"],
                 name="Ensure snmp_exporter's module and SNMPv3 login are up to date (0640)."),
        ),
    ]  # fmt: skip


def _default(args: str) -> str:
    return f'# Managed by webinfra-testbed (provision/roles/monitor).\nARGS="{args}"\n'


def certificate(topo: Topology, host: Host) -> secrets.KeyPair:
    """The monitor's certificate (monitoring.server_certificate: rsyslog shows it too)."""
    return monitoring.server_certificate(topo, host)


def tls_steps(topo: Topology, host: Host) -> list[Step]:
    """HTTPS and basic auth in front of everything Prometheus serves (option monitor_tls)."""
    pair = certificate(topo, host)
    users = [
        (u, secrets.bcrypt_hash(monitoring.password_secret(u)))
        for u in (monitoring.AGENT_USER, monitoring.OPERATOR_USER)
    ]
    private = {"mode": "0640", "owner": "root", "group": "prometheus"}
    return [
        File(monitoring.CA_FILE, secrets.ca().cert_pem, notify=["restart prometheus"],
             name="Ensure the testbed CA is installed (the self-scrape verifies with it)."),
        File(f"{monitoring.TLS_DIR}/monitor.crt", pair.cert_pem, notify=["restart prometheus"],
             name="Ensure the monitor's certificate is installed."),
        File(f"{monitoring.TLS_DIR}/monitor.key", pair.key_pem, **private,
             notify=["restart prometheus"],
             name="Ensure the monitor's private key is installed (0640, group prometheus)."),
        File(monitoring.OPERATOR_PASSWORD_FILE,
             secrets.password(monitoring.password_secret(monitoring.OPERATOR_USER)),
             **private, notify=["reload prometheus"],
             name="Ensure the self-scrape's password is in place (0640)."),
        File(monitoring.WEB_CONFIG,
             render("monitor", "web.yml.j2", cert=f"{monitoring.TLS_DIR}/monitor.crt",
                    key=f"{monitoring.TLS_DIR}/monitor.key", users=users),
             **private, validate="promtool check web-config {path}",
             notify=["restart prometheus"],
             name="Ensure Prometheus answers HTTPS only, to the agent and operator users."),
    ]  # fmt: skip


def steps(ctx: HostContext) -> list[Step]:
    topo, host = ctx.topology, ctx.host
    tls = monitoring.uses_tls(topo)
    web_config = f"--web.config.file={monitoring.WEB_CONFIG} " if tls else ""
    return [
        Packages(
            ("prometheus", "prometheus-alertmanager", "mtail", "prometheus-blackbox-exporter"),
            name="Ensure Prometheus, Alertmanager, mtail and the blackbox exporter are installed.",
        ),
        Packages(
            ("prometheus-snmp-exporter",),
            start_services=False,  # its own config would answer on every address
            name="Ensure snmp_exporter is installed.",
        ),
        *(tls_steps(topo, host) if tls else []),
        Command(
            "Ensure the console libraries the dashboard needs are in place.",
            check="[ -f /etc/prometheus/console_libraries/prom.lib ]",
            run=f"cp {EXAMPLES}/console_libraries/*.lib /etc/prometheus/console_libraries/",
        ),
        File(
            "/etc/prometheus/rules/testbed.yml",
            render(
                "monitor",
                "rules.yml.j2",
                hosts=monitoring.reporting_hosts(topo),
                window="30s",
            ),
            validate="promtool check rules {path}",
            notify=["reload prometheus"],
            name="Ensure the recording and alerting rules are up to date.",
        ),
        File(
            "/etc/prometheus/prometheus.yml",
            render(
                "monitor",
                "prometheus.yml.j2",
                host=host,
                targets=monitoring.targets(topo, host),
                probes=probe_jobs(topo),
                snmp=monitoring.snmp_targets(topo),
                snmp_exporter=layout.SNMP_EXPORTER_LISTEN,
                blackbox=layout.BLACKBOX_LISTEN,
                interval=monitoring.SCRAPE_INTERVAL,
                alertmanager=layout.ALERTMANAGER_LISTEN,
                prometheus_port=topo.port("prometheus"),
                tls=tls,
                ca_file=monitoring.CA_FILE,
                user=monitoring.OPERATOR_USER,
                password_file=monitoring.OPERATOR_PASSWORD_FILE,
            ),
            validate="promtool check config --syntax-only {path}",
            notify=["reload prometheus"],
            name="Ensure the central Prometheus config is up to date.",
        ),
        File(
            "/etc/prometheus/consoles/testbed.html",
            render(
                "monitor",
                "testbed.html.j2",
                comment="{{/*",
                hosts=list(topo),
                log_hosts=[h.name for h in monitoring.reporting_hosts(topo)],
                probes=monitoring.probes(topo),
                snmp_hosts=[p.host for p in monitoring.snmp_targets(topo)],
                db_hosts=dbcluster.db_hosts(topo),
            ).replace("local edits are overwritten.\n", "local edits are overwritten. */}}\n", 1),
            name="Ensure the dashboard is up to date.",
        ),
        File(
            "/etc/default/prometheus",
            _default(
                "--config.file=/etc/prometheus/prometheus.yml "
                f"--web.listen-address=0.0.0.0:{topo.port('prometheus')} "
                "--web.enable-remote-write-receiver "
                f"{web_config}"
                f"--storage.tsdb.retention.time={RETENTION} "
                "--web.console.templates=/etc/prometheus/consoles "
                "--web.console.libraries=/etc/prometheus/console_libraries"
            ),
            notify=["restart prometheus"],
            name="Ensure Prometheus receives remote writes and keeps a day of data.",
        ),
        Service("prometheus", name="Ensure Prometheus is running."),
        *mtail_steps(topo),
        *blackbox_steps(topo),
        *snmp_steps(),
        File(
            "/etc/prometheus/alertmanager.yml",
            render("monitor", "alertmanager.yml.j2", receiver=layout.ALERT_RECEIVER_LISTEN),
            validate="amtool check-config {path}",
            notify=["restart prometheus-alertmanager"],
            name="Ensure Alertmanager sends every alert to the recorder.",
        ),
        File(
            "/etc/default/prometheus-alertmanager",
            _default(
                "--config.file=/etc/prometheus/alertmanager.yml "
                f"--web.listen-address={layout.ALERTMANAGER_LISTEN} --cluster.listen-address="
            ),
            notify=["restart prometheus-alertmanager"],
            name="Ensure Alertmanager listens on loopback, without clustering.",
        ),
        Service("prometheus-alertmanager", name="Ensure Alertmanager is running."),
        role_script(
            "monitor",
            "alert-receiver.py",
            RECEIVER_SCRIPT,
            "alert-receiver",
            "Ensure the alert recorder is installed.",
        ),
        File(
            "/etc/systemd/system/alert-receiver.service",
            render(
                "monitor",
                "alert-receiver.service.j2",
                script=RECEIVER_SCRIPT,
                listen=layout.host_of(layout.ALERT_RECEIVER_LISTEN),
                port=layout.port_of(layout.ALERT_RECEIVER_LISTEN),
            ),
            notify=["restart alert-receiver"],
            name="Ensure the alert recorder's unit is up to date.",
        ),
        Service("alert-receiver", name="Ensure the alert recorder is running."),
    ]


ROLE = Role(
    "monitor",
    "monitor",
    steps,
    handlers=[
        restart_handler("prometheus"),
        reload_handler("prometheus"),
        restart_handler("prometheus-alertmanager"),
        restart_handler("alert-receiver"),
        restart_handler("mtail"),
        restart_handler("prometheus-blackbox-exporter"),
        restart_handler("prometheus-snmp-exporter"),
    ],
)
