"""Take the README's screenshot of the site the way the browser test sees it.

    .venv/bin/python -m bench.screenshot            # writes docs/site.png

Headless Chromium (Debian's) trusting the testbed CA through an NSS database, the site's
name mapped to where this machine reaches it (provision/testkit.py's `chromium`); posts
one note through the form, then photographs the top of the front page. Needs a running,
deployed testbed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from provision import PROJECT_ROOT, topology
from provision.testkit import BrowserUnavailable, Site, chromium

OUT = PROJECT_ROOT / "docs" / "site.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", default="Hello from the README's screenshot")
    args = parser.parse_args()
    from selenium.webdriver.common.by import By

    site = Site.of(topology.load())
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
