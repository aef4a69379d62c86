"""Take the README's screenshot of the site the way the browser test sees it, or of the
monitoring dashboard the way an operator sees it.

    .venv/bin/python -m bench.screenshot               # writes docs/site.png
    .venv/bin/python -m bench.screenshot --dashboard   # writes docs/dashboard.png

Headless Chromium (Debian's) trusting the testbed CA through an NSS database, the site's
name mapped to where this machine reaches it (provision/testkit.py's `chromium`); posts
one note through the form, then photographs the top of the front page. With `--dashboard`: the
monitor's console page where this machine reaches it, over HTTPS trusting the internal CA
with the operator's login when the topology's monitor_tls is on (sent as a header through
the DevTools protocol: the page's graphs ask Prometheus's API with it), the whole page
(the window grows to its height). Needs a running, deployed testbed.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from pathlib import Path

from provision import PROJECT_ROOT, inventory, monitoring, secrets, topology
from provision.testkit import BrowserUnavailable, Site, chromium

OUT = PROJECT_ROOT / "docs" / "site.png"
DASHBOARD_OUT = PROJECT_ROOT / "docs" / "dashboard.png"
DASHBOARD_PATH = "/consoles/testbed.html"


def dashboard(site: Site, topo: topology.Topology, out: Path, home: Path) -> None:
    mon = monitoring.monitor_host(topo)
    if mon is None:
        sys.exit(f"screenshot: topology {topo.name} has no monitor")
    address, port = inventory.service_entry(topo, mon.name, "prometheus")
    tls = monitoring.uses_tls(topo)
    url = f"{'https' if tls else 'http'}://{mon.name if tls else address}:{port}{DASHBOARD_PATH}"
    trust = [secrets.ca_cert_path()] if tls else []
    with chromium(site, home, also_trust=trust, also_map=[f"{mon.name} {address}"]) as browser:
        if tls:
            user = monitoring.OPERATOR_USER
            login = f"{user}:{secrets.password(monitoring.password_secret(user))}"
            header = "Basic " + base64.b64encode(login.encode()).decode()
            browser.execute_cdp_cmd("Network.enable", {})
            browser.execute_cdp_cmd(
                "Network.setExtraHTTPHeaders", {"headers": {"Authorization": header}}
            )
        browser.set_window_size(1280, 1000)
        browser.get(url)
        time.sleep(5)  # the graphs draw after their queries return
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1280, min(int(height) + 40, 6000))
        time.sleep(2)
        browser.save_screenshot(str(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help=f"default: {OUT} ({DASHBOARD_OUT})")
    parser.add_argument(
        "--dashboard", action="store_true", help="the monitoring dashboard, not the site"
    )
    parser.add_argument("--note", default="Hello from the README's screenshot")
    args = parser.parse_args()
    from selenium.webdriver.common.by import By

    topo = topology.load()
    site = Site.of(topo)
    if args.dashboard:
        args.out = args.out or DASHBOARD_OUT
        try:
            with tempfile.TemporaryDirectory() as home:
                dashboard(site, topo, args.out, Path(home))
        except BrowserUnavailable as exc:
            sys.exit(f"screenshot: {exc}")
        print(f"wrote {args.out}")
        return 0
    args.out = args.out or OUT
    url = f"https://{site.name}:{site.entry.https}/"
    try:
        with tempfile.TemporaryDirectory() as home, chromium(site, Path(home)) as browser:
            browser.set_window_size(1000, 760)
            browser.get(url)
            browser.find_element(By.ID, "text").send_keys(args.note)
            browser.find_element(By.ID, "submit").click()
            browser.get(url)  # the top of the page, not the new note's anchor
            browser.save_screenshot(str(args.out))
    except BrowserUnavailable as exc:
        sys.exit(f"screenshot: {exc}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
