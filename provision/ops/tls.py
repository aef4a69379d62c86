"""`fab tls.renew`: a new site certificate, installed on the load balancers."""

from __future__ import annotations

from provision import engine, site
from provision.ops.common import endpoints, load
from provision.roles import lb


def tls_renew(topology_name: str | None, inventory_file: str | None) -> engine.Report:
    """Issue a new site certificate and install it on the load balancers (HAProxy reload)."""
    topo = load(topology_name)
    eps = endpoints(topo, inventory_file)  # a bad inventory stops here, before the renewal
    old = site.site_certificate(topo).cert.serial_number
    new = site.site_certificate(topo, renew=True).cert
    print(
        f"Issued a new certificate for {topo.site.name}: serial {old:x} -> {new.serial_number:x}, "
        f"valid until {new.not_valid_after_utc:%Y-%m-%d}.",
        flush=True,
    )
    lbs = [h.name for h in topo.with_role("lb")]
    report = engine.deploy(topo, eps, [lb.ROLE], only_hosts=lbs)
    print(engine.summary(report), flush=True)
    return report
