"""The `common` role, on every host: name, name resolution, sshd, base packages, time zone."""

from __future__ import annotations

from provision import layout
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
)
from provision.roles.common import hardening
from provision.topology import Host, Topology

BASE_PACKAGES = layout.BASE_PACKAGES
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-webinfra-testbed.conf"
"""Named to sort first: sshd keeps the first value it reads for a keyword, and an image's
own drop-ins (cloud images ship 50-cloud-init.conf, which may allow passwords) come later."""
OLD_SSHD_DROPINS = ("/etc/ssh/sshd_config.d/50-webinfra-testbed.conf",)
TIMEZONE = "Etc/UTC"
HOSTS_COPY = "/etc/webinfra-testbed/hosts"
"""The deployed /etc/hosts, kept where no container runtime writes: docker rewrites its
bind-mounted /etc/hosts each time the machine starts, losing the testbed's names."""
HOSTS_UNIT = "testbed-hosts.service"
HOSTS_UNIT_TEXT = f"""# Managed by webinfra-testbed (provision/roles/common/__init__.py).
[Unit]
Description=Put back the testbed's /etc/hosts (a container runtime rewrites it at start)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target network-pre.target nss-lookup.target
ConditionPathExists={HOSTS_COPY}

[Service]
Type=oneshot
RemainAfterExit=yes
# Written through, not renamed: under docker /etc/hosts is a bind mount.
ExecStart=/bin/sh -c 'cat {HOSTS_COPY} > /etc/hosts'

[Install]
WantedBy=sysinit.target
"""


def hosts_entries(topology: Topology, viewer: Host) -> list[tuple[str, list[str]]]:
    """(address, names) lines of /etc/hosts as `viewer` should see the testbed.

    Each host resolves to its address on a network it shares with the viewer
    (so traffic takes the path the firewall expects); the site's names resolve
    to the load balancer where the viewer shares a network with it.
    """
    entries: list[tuple[str, list[str]]] = []
    vips = [v for v in topology.vips.values() if v.role == "lb" and v.network in viewer.addresses]
    if vips:  # the load balancers' floating address is the site
        entries.append((str(vips[0].address), list(topology.site.names)))
    for host in topology:
        names = [host.name]
        if not vips and host.has_role("lb") and topology.shared_networks(viewer, host):
            lbs = [h for h in topology.with_role("lb") if topology.shared_networks(viewer, h)]
            if host is lbs[0]:
                names += list(topology.site.names)
        entries.append((str(topology.address_for(viewer, host)), names))
    return entries


def sshd_users(ctx: HostContext) -> list[str]:
    """The accounts sshd lets in: the one the deploy logs in as (vagrant, or the inventory's
    user), which every task and test uses too."""
    user = ctx.facts.get("ssh_user", "")
    return [user] if user else ["vagrant"]


def steps(ctx: HostContext) -> list[Step]:
    host = ctx.host
    hosts = render("common", "hosts.j2", host=host, entries=hosts_entries(ctx.topology, host))
    return [
        File("/etc/hostname", f"{host.name}\n", name="Ensure /etc/hostname names the host."),
        Command(
            "Ensure the running hostname matches the topology.",
            check=f'[ "$(hostname)" = {host.name} ]',
            run=f"hostname {host.name}",
        ),
        File(
            "/etc/hosts",
            hosts,
            name="Ensure /etc/hosts resolves every testbed host.",
        ),
        File(HOSTS_COPY, hosts, name="Ensure a copy of /etc/hosts is kept for boot."),
        File(
            f"/etc/systemd/system/{HOSTS_UNIT}",
            HOSTS_UNIT_TEXT,
            name="Ensure /etc/hosts is put back at every boot.",
        ),
        Service(HOSTS_UNIT, name="Ensure the unit that puts back /etc/hosts is enabled."),
        # The box has the base packages but no package lists: whatever is installed by
        # hand later (an operator's tool, the tests' nmap) needs them.
        Command(
            "Ensure apt's package lists are less than a day old.",
            check="find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 | grep -q .",
            run="apt-get update -q",
        ),
        Packages(BASE_PACKAGES, name="Ensure the base packages are installed."),
        Command(
            "Ensure no earlier name of the sshd drop-in is left.",
            check=" && ".join(f"[ ! -e {p} ]" for p in OLD_SSHD_DROPINS),
            run="rm -f " + " ".join(OLD_SSHD_DROPINS),
            notify=["reload ssh"],
        ),
        File(
            SSHD_DROPIN,
            render("common", "sshd.conf.j2", users=sshd_users(ctx)),
            mode="0600",
            validate="/usr/sbin/sshd -t -f {path}",
            notify=["reload ssh"],
            name="Ensure sshd is hardened (keys only, no root login).",
        ),
        Service("ssh", name="Ensure sshd is enabled and running."),
        *hardening.steps(),
        File("/etc/timezone", f"{TIMEZONE}\n", name="Ensure /etc/timezone says UTC."),
        Command(
            "Ensure the time zone is UTC.",
            check=f'[ "$(readlink /etc/localtime)" = /usr/share/zoneinfo/{TIMEZONE} ]',
            run=f"ln -sfn /usr/share/zoneinfo/{TIMEZONE} /etc/localtime",
        ),
    ]


ROLE = Role("common", "common", steps, handlers=[reload_handler("ssh")])
