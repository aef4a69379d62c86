"""The `web` role: nginx in front of the app, listening on the backend flow's port.

In plain mode (seed) nginx speaks HTTP on the private network; with the topology's
`reencrypt` option it speaks TLS there, with a certificate from the testbed CA that
HAProxy verifies.
"""

from __future__ import annotations

from provision import layout, secrets, site, tls
from provision.engine import (
    Command,
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

SITE = "/etc/nginx/sites-available/webinfra-testbed.conf"
ENABLED = "/etc/nginx/sites-enabled/webinfra-testbed.conf"
CERT_DIR = "/etc/nginx/tls"
MAX_BODY = "16k"


def backend_address(topology: Topology, web: Host) -> str:
    lb = topology.with_role("lb")[0]
    return str(topology.address_for(lb, web))


def certificate(topology: Topology, web: Host) -> secrets.KeyPair:
    return secrets.leaf(f"backend-{web.name}", [web.name], [str(a) for a in web.addresses.values()])


def steps(ctx: HostContext) -> list[Step]:
    topo, host = ctx.topology, ctx.host
    reencrypt = bool(topo.option("reencrypt", False))
    result: list[Step] = [Packages(("nginx",), name="Ensure nginx is installed.")]
    if reencrypt:
        pair = certificate(topo, host)
        result += [
            File(
                f"{CERT_DIR}/backend.crt",
                pair.cert_pem,
                notify=["restart nginx"],
                name="Ensure this backend's certificate is installed.",
            ),
            File(
                f"{CERT_DIR}/backend.key",
                pair.key_pem,
                mode="0600",
                notify=["restart nginx"],
                name="Ensure this backend's private key is installed (0600).",
            ),
            File(
                f"{CERT_DIR}/ca.crt",
                secrets.ca().cert_pem,
                notify=["restart nginx"],
                name="Ensure the testbed CA is installed (to verify the balancers).",
            ),
        ]
    result += [
        File(
            SITE,
            render(
                "web",
                "site.conf.j2",
                address=backend_address(topo, host),
                port=site.backend_port(topo),
                tls=reencrypt,
                policy=tls.INTERMEDIATE,
                cert_dir=CERT_DIR,
                client_name=site.BALANCER_CLIENT,
                upstream=layout.APP_LISTEN,
                max_body=MAX_BODY,
                status_listen=layout.NGINX_STATUS_LISTEN,
            ),
            validate_in_place="nginx -t -q",
            notify=["restart nginx"],
            name="Ensure the nginx site proxies to the app.",
        ),
        Command(
            "Ensure only the testbed site is enabled.",
            check=f"[ -L {ENABLED} ] && [ ! -e /etc/nginx/sites-enabled/default ]",
            run=f"ln -sfn {SITE} {ENABLED} && rm -f /etc/nginx/sites-enabled/default",
            notify=["restart nginx"],
        ),
        Service("nginx", name="Ensure nginx is enabled and running."),
    ]
    return result


# A restart, not a reload: nginx cannot move a listener from 0.0.0.0 to one address on
# reload (the bind fails and the old config stays). HAProxy retries what a restart drops.
ROLE = Role("web", "web", steps, handlers=[restart_handler("nginx")])
