"""The `firewall` role, on every host: rules from the topology's flows, applied atomically.

This role alone owns the rules. They are written to /etc/iptables/rules.v{4,6}
(validated with `iptables-restore --test`), loaded in one step with
iptables-restore (no window without rules; established sessions, the deploy's own
included, survive), and restored at boot by netfilter-persistent.
"""

from __future__ import annotations

from typing import Any

from provision import firewall, layout
from provision.engine import (
    Command,
    File,
    HostContext,
    Packages,
    Role,
    Service,
    Step,
    render,
)

RULES_V4 = "/etc/iptables/rules.v4"
RULES_V6 = "/etc/iptables/rules.v6"
STATE = "/var/lib/webinfra-testbed/firewall.sha256"
"""Digest of the rule files and of the live rules as the last apply left them: a changed
file or a hand edit of the live rules makes it differ, and the rules are applied again."""
LIVE = f"{{ cat {RULES_V4} {RULES_V6}; iptables -S; ip6tables -S; }} | sha256sum | cut -d' ' -f1"
APPLY = (
    f"iptables-restore < {RULES_V4} && ip6tables-restore < {RULES_V6} && "
    f"install -d -m 0755 /var/lib/webinfra-testbed && {LIVE} > {STATE}"
)


def steps(ctx: HostContext) -> list[Step]:
    management = ctx.facts["ssh_client"]
    nics = firewall.Nics.from_facts(ctx.facts)
    accepts = firewall.accepts(ctx.topology, ctx.host, management, nics)
    context: dict[str, Any] = {
        "host": ctx.host,
        "accepts": accepts,
        "stray_resets": firewall.stray_resets(ctx.topology, accepts),
        "restart_holds": firewall.restart_holds(ctx.topology, ctx.host, accepts),
        "egress": None
        if firewall.egress_open(ctx.host)
        else firewall.egress(ctx.topology, ctx.host, nics),
        "log_group": firewall.LOG_GROUP,
        "prefix": firewall.log_prefix(ctx.host),
        "egress_prefix": firewall.egress_log_prefix(ctx.host),
    }
    sysctls = "".join(f"{k} = {v}\n" for k, v in layout.NET_SYSCTLS.items())
    live = " && ".join(f'[ "$(sysctl -n {k})" = {v} ]' for k, v in layout.NET_SYSCTLS.items())
    return [
        File(
            layout.SYSCTL_FILE,
            "# Managed by webinfra-testbed (provision/layout.py NET_SYSCTLS).\n" + sysctls,
            name="Ensure the kernel's network settings are written (rp_filter, no redirects).",
        ),
        Command(
            "Ensure the kernel's network settings are live.",
            check=live,
            # In order, only those that differ: docker sets its --sysctl values in no fixed
            # order, and some keys are read-only inside a container.
            run='bad=""; '
            + "".join(
                f'[ "$(sysctl -n {k})" = {v} ] || sysctl -q -w {k}={v} || bad="$bad {k}"; '
                for k, v in layout.NET_SYSCTLS.items()
            )
            + '[ -z "$bad" ] || { echo "cannot set$bad here (/proc/sys is read-only: a docker '
            "machine gets them when it is created; recreate it: ./testbed destroy && "
            './testbed up)" >&2; exit 1; }',
        ),
        Packages(
            layout.FIREWALL_PACKAGES,
            name="Ensure iptables, netfilter-persistent and ulogd2 are installed.",
        ),
        *(
            File(
                path,
                render("firewall", f"rules.v{version}.j2", **context),
                mode="0640",
                validate=f"{tool}-restore --test {{path}}",
                name=name,
            )
            for version, path, tool, name in (
                (4, RULES_V4, "iptables", "Ensure the IPv4 rules match the topology's flows."),
                (6, RULES_V6, "ip6tables", "Ensure the IPv6 rules drop everything not needed."),
            )
        ),
        Command(
            "Ensure the live rules are the ones in /etc/iptables (applied atomically).",
            check=f'[ -f {STATE} ] && [ "$({LIVE})" = "$(cat {STATE})" ]',
            run=APPLY,
        ),
        Service("netfilter-persistent", name="Ensure the rules are restored at boot."),
        Service("ulogd2", name="Ensure dropped packets are logged (ulogd2)."),
    ]


ROLE = Role("firewall", "common", steps)
