"""The `agent` role: the monitoring agent on every host that can reach the monitor.

node_exporter plus the exporters of the host's roles, all on loopback, and Prometheus in
agent mode scraping them and pushing (remote_write) to the monitor: like a Datadog
agent, a host only makes outbound connections. Every series carries `host` and `role`.
The monitor host itself is scraped by the central Prometheus directly (`monitor` role).
"""

from __future__ import annotations

from provision import layout, monitoring, secrets, site
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

NODE_TEXTFILES = layout.NODE_TEXTFILES


def _default(args: str) -> str:
    return f'ARGS="{args}"\n'


SNMPD_CONFIG = "/etc/snmp/snmpd.conf"
SNMPD_STATE = "/var/lib/snmp/snmpd.conf"


def snmp_steps(ctx: HostContext) -> list[Step]:
    """snmpd, SNMPv3 only, on the address the monitor polls (monitoring.snmp_address); and
    the net-snmp tools (snmpget), which the tests use to ask as an outsider would."""
    topo, host = ctx.topology, ctx.host
    user = monitoring.snmp_user()
    return [
        Packages(
            ("snmpd", "snmp"),
            start_services=False,  # Debian's own config answers v2c "public": never run it
            name="Ensure snmpd and the net-snmp tools are installed.",
        ),
        File(
            SNMPD_CONFIG,
            render(
                "agent",
                "snmpd.conf.j2",
                host=host.name,
                address=monitoring.snmp_address(topo, host),
                port=topo.port("snmp"),
                oids=monitoring.SNMP_OIDS,
                user=user,
                auth=monitoring.SNMP_AUTH[0],
                priv=monitoring.SNMP_PRIV[0],
            ),
            mode="0600",
            notify=["restart snmpd"],
            name="Ensure snmpd answers SNMPv3 (authPriv) only, on the private address (0600).",
        ),
        File(
            "/etc/systemd/system/snmpd.service.d/webinfra-testbed.conf",
            "# Managed by webinfra-testbed (provision/roles/agent).\n"
            "# snmpd saves its users' keys in its state file and loads them again at start;\n"
            "# the managed config alone says who may ask (a changed password takes effect).\n"
            "# No MIB files are installed (Debian ships them apart): snmpd needs none.\n"
            "# It binds one address: start once the network is up, and again if it failed.\n"
            "[Unit]\nWants=network-online.target\nAfter=network-online.target\n"
            "[Service]\nEnvironment=MIBS=\nRestart=on-failure\nRestartSec=2\n"
            f"ExecStartPre=-/bin/sed -i '/^usmUser /d' {SNMPD_STATE}\n",
            notify=["restart snmpd"],
            name="Ensure snmpd's users come from the managed config only.",
        ),
        Service("snmpd", name="Ensure snmpd is running."),
    ]


def steps(ctx: HostContext) -> list[Step]:
    topo, host = ctx.topology, ctx.host
    if host not in monitoring.reporting_hosts(topo):
        return []
    result: list[Step] = [
        Packages(("prometheus-node-exporter",), name="Ensure node_exporter is installed."),
        File(
            "/etc/default/prometheus-node-exporter",
            "# Managed by webinfra-testbed (provision/roles/agent); local edits are overwritten.\n"
            + _default(
                f"--web.listen-address={layout.NODE_EXPORTER_LISTEN} "
                f"--collector.textfile.directory={NODE_TEXTFILES}"
            ),
            notify=["restart prometheus-node-exporter"],
            name="Ensure node_exporter listens on loopback only.",
        ),
        Service("prometheus-node-exporter", name="Ensure node_exporter is running."),
    ]
    if host.has_role("lb"):
        cert = site.site_certificate(topo).cert
        result.append(
            File(
                layout.CERT_EXPIRY_TEXTFILE,
                "# Managed by webinfra-testbed: the site certificate's expiry, for the alert.\n"
                "# TYPE testbed_tls_certificate_not_after_seconds gauge\n"
                f'testbed_tls_certificate_not_after_seconds{{name="{topo.site.name}"}} '
                f"{int(cert.not_valid_after_utc.timestamp())}\n",
                name="Ensure the certificate's expiry is exported.",
            )
        )
    if host.has_role("web"):
        result += [
            Packages(
                ("prometheus-nginx-exporter",), name="Ensure the nginx exporter is installed."
            ),
            File(
                "/etc/default/prometheus-nginx-exporter",
                "# Managed by webinfra-testbed (provision/roles/agent).\n"
                + _default(
                    f"-nginx.scrape-uri=http://{layout.NGINX_STATUS_LISTEN}/nginx_status "
                    f"-web.listen-address={layout.NGINX_EXPORTER_LISTEN}"
                ),
                notify=["restart prometheus-nginx-exporter"],
                name="Ensure the nginx exporter reads stub_status on loopback.",
            ),
            Service("prometheus-nginx-exporter", name="Ensure the nginx exporter is running."),
        ]
    if host.has_role("db-primary") or host.has_role("db-replica"):
        result += [
            Packages(
                ("prometheus-mysqld-exporter",), name="Ensure the mysqld exporter is installed."
            ),
            File(
                "/etc/prometheus/mysqld-exporter.cnf",
                "# Managed by webinfra-testbed (provision/roles/agent).\n[client]\nuser = monitor\n"
                f"password = {secrets.password('db-monitor')}\n"
                "socket = /run/mysqld/mysqld.sock\n",
                mode="0640",
                owner="root",
                group="prometheus",
                notify=["restart prometheus-mysqld-exporter"],
                name="Ensure the mysqld exporter's credentials are in place (0640).",
            ),
            File(
                "/etc/default/prometheus-mysqld-exporter",
                "# Managed by webinfra-testbed (provision/roles/agent).\n"
                + _default(
                    "--config.my-cnf=/etc/prometheus/mysqld-exporter.cnf "
                    f"--web.listen-address={layout.MYSQLD_EXPORTER_LISTEN} --collect.slave_status"
                ),
                notify=["restart prometheus-mysqld-exporter"],
                name="Ensure the mysqld exporter listens on loopback only.",
            ),
            Service("prometheus-mysqld-exporter", name="Ensure the mysqld exporter is running."),
        ]
    result += snmp_steps(ctx)
    if host is monitoring.monitor_host(topo):
        return result  # the central Prometheus scrapes this host itself
    tls = monitoring.uses_tls(topo)
    mon = monitoring.monitor_host(topo)
    assert mon is not None
    result += [
        Packages(("prometheus",), name="Ensure Prometheus (the agent) is installed."),
        *(
            [
                File(
                    monitoring.CA_FILE,
                    secrets.ca().cert_pem,
                    notify=["restart prometheus"],
                    name="Ensure the testbed CA is installed (the agent verifies the monitor).",
                ),
                File(
                    monitoring.AGENT_PASSWORD_FILE,
                    secrets.password(monitoring.password_secret(monitoring.AGENT_USER)),
                    mode="0640",
                    owner="root",
                    group="prometheus",
                    notify=["restart prometheus"],
                    name="Ensure the agent's password for the monitor is in place (0640).",
                ),
            ]
            if tls
            else []
        ),
        File(
            "/etc/prometheus/prometheus.yml",
            render(
                "agent",
                "prometheus-agent.yml.j2",
                host=host,
                targets=monitoring.targets(topo, host),
                interval=monitoring.SCRAPE_INTERVAL,
                remote_write=monitoring.remote_write_url(topo, host),
                tls=tls,
                ca_file=monitoring.CA_FILE,
                server_name=mon.name,
                user=monitoring.AGENT_USER,
                password_file=monitoring.AGENT_PASSWORD_FILE,
            ),
            validate="promtool check config --agent {path}",
            notify=["restart prometheus"],
            name="Ensure the agent scrapes this host's exporters and pushes to the monitor.",
        ),
        File(
            "/etc/default/prometheus",
            "# Managed by webinfra-testbed (provision/roles/agent).\n"
            + _default(
                "--enable-feature=agent --config.file=/etc/prometheus/prometheus.yml "
                f"--web.listen-address={layout.AGENT_LISTEN} "
                "--storage.agent.path=/var/lib/prometheus/agent"
            ),
            notify=["restart prometheus"],
            name="Ensure Prometheus runs in agent mode on loopback.",
        ),
        Service("prometheus", name="Ensure the agent is running."),
    ]
    return result


ROLE = Role(
    "agent",
    "agent",
    steps,
    handlers=[
        restart_handler("prometheus-node-exporter"),
        restart_handler("prometheus-nginx-exporter"),
        restart_handler("prometheus-mysqld-exporter"),
        restart_handler("prometheus"),
        restart_handler("snmpd"),
    ],
)
