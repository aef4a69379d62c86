"""What the acceptance tests and bench/ share, in one place below both of them.

* :func:`fab` runs a Fabric task as a user would (same Python, same inventory);
* :class:`Site` talks to the site over HTTPS (or HTTP) where this machine reaches it:
  Vagrant's forwarded ports on 127.0.0.1, or the inventory's ``site`` entry;
* :class:`Writer` posts notes in a loop and remembers which were acknowledged;
  :func:`not_present_once` checks them on a database node;
* :func:`semisync_status` and :func:`wait_semisync_on` read and warm up semi-sync;
* :func:`chromium` opens the site in a real, headless browser that trusts the testbed CA.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision import PROJECT_ROOT, dbcluster, inventory, layout, secrets
from provision.engine import Remote
from provision.topology import Topology

JSON = {"Content-Type": "application/json"}


class FabError(AssertionError):
    """`fab` exited non-zero; the message holds the end of its output."""


def fab(*args: str) -> str:
    """Run `fab ARGS` as a user would; its output, or FabError with the end of it."""
    return fab_run(*args, check=True).stdout


def fab_run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `fab ARGS` in the project as a user would ($TESTBED_INVENTORY passes through)."""
    res = subprocess.run(
        [sys.executable, "-m", "fabric", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    )
    if check and res.returncode != 0:
        raise FabError(
            f"fab {' '.join(args)} exited {res.returncode}:\n"
            + res.stdout[-3000:]
            + res.stderr[-2000:]
        )
    return res


# --------------------------------------------------------------------------- the site


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def json(self) -> Any:
        return json.loads(self.body)


def tls_context(**settings: object) -> ssl.SSLContext:
    """A client context that trusts the site CA only; `settings` set its attributes."""
    ctx = ssl.create_default_context(cafile=str(secrets.site_ca_cert_path()))
    for key, value in settings.items():
        setattr(ctx, key, value)
    return ctx


@dataclass(frozen=True)
class Site:
    """The site as this machine reaches it (see provision.inventory.site_entry)."""

    name: str
    entry: inventory.SiteEntry

    @classmethod
    def of(cls, topology: Topology, inventory_file: str | None = None) -> Site:
        return cls(topology.site.name, inventory.site_entry(topology, inventory_file))

    @property
    def via_forward(self) -> bool:
        """True when the ports are forwarded to this machine's loopback (Vagrant)."""
        return self.entry.address == "127.0.0.1"

    def tls_socket(self, ctx: ssl.SSLContext | None = None, name: str = "") -> ssl.SSLSocket:
        """A TLS connection to the site's HTTPS port, with SNI `name` (default: the site)."""
        raw = socket.create_connection((self.entry.address, self.entry.https), timeout=10)
        try:
            return (ctx or tls_context()).wrap_socket(raw, server_hostname=name or self.name)
        except Exception:
            raw.close()
            raise

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        host: str | None = None,
    ) -> Reply:
        """`host`: the Host header (default: the site's name; "" sends an empty one)."""
        site = self

        class Conn(http.client.HTTPSConnection):
            def connect(self) -> None:
                self.sock = site.tls_socket()

        conn = Conn(self.entry.address, self.entry.https, timeout=15)
        try:
            conn.request(
                method,
                path,
                body=body,
                headers={"Host": self.name if host is None else host, **(headers or {})},
            )
            res = conn.getresponse()
            return Reply(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
        finally:
            conn.close()

    def plain_request(self, path: str, host: str) -> Reply:
        conn = http.client.HTTPConnection(self.entry.address, self.entry.http, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host})
            res = conn.getresponse()
            return Reply(res.status, {k.lower(): v for k, v in res.getheaders()}, res.read())
        finally:
            conn.close()

    def raw_exchange(self, payload: bytes, read_timeout: float = 10) -> bytes:
        """Send raw bytes over TLS and return what the server answers before closing."""
        sock = self.tls_socket()
        try:
            sock.sendall(payload)
            sock.settimeout(read_timeout)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, ssl.SSLError, ConnectionError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            sock.close()


# --------------------------------------------------------------------------- writes


@dataclass
class Writer:
    """Posts notes with unique texts as fast as one client can, through the site's API;
    remembers every acknowledged (201) note and the time of every answer, so a drill can
    say how long writes failed and whether any acknowledged write was lost."""

    site: Site
    acked: dict[str, int] = field(default_factory=dict)
    """text -> id of every note the site acknowledged (201)."""
    answers: list[tuple[float, bool]] = field(default_factory=list)
    """(monotonic time, acknowledged?) of every attempt."""
    prefix: str = field(default_factory=lambda: f"drill-{uuid.uuid4().hex[:8]}")
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            text = f"{self.prefix}-{n}"
            ok = False
            try:
                reply = self.site.request("POST", "/api/notes", json.dumps({"text": text}), JSON)
                if reply.status == 201:
                    self.acked[text] = int(reply.json()["id"])
                    ok = True
            except Exception:  # a failed write is data for the drill, not an error
                pass
            self.answers.append((time.monotonic(), ok))
            if not ok:
                time.sleep(0.05)

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def outage_after(self, fault: float) -> float:
        """How long writes failed after `fault`: from the last acknowledged write before
        the first failure to the first acknowledged write after it (0 if none failed)."""
        failures = [t for t, ok in self.answers if not ok and t > fault]
        if not failures:
            return 0.0
        first_failure = failures[0]
        before = [t for t, ok in self.answers if ok and t < first_failure]
        after = [t for t, ok in self.answers if ok and t > first_failure]
        if not after:
            return float("inf")
        return after[0] - (before[-1] if before else fault)

    def failures_after(self, fault: float) -> int:
        return sum(1 for t, ok in self.answers if not ok and t > fault)


def not_present_once(node: Remote, acked: dict[str, int]) -> list[str]:
    """Texts of acknowledged notes that are missing, or present more than once, on `node`."""
    if not acked:
        return []
    prefix = next(iter(acked)).rsplit("-", 1)[0]
    rows = dbcluster.mysql(
        node,
        f"SELECT text, COUNT(*) FROM {layout.DATABASE}.notes WHERE text LIKE '{prefix}-%' "
        "GROUP BY text;",
    )
    counts = {text: int(n) for text, n in rows}
    return [t for t in acked if counts.get(t) != 1]


# --------------------------------------------------------------------------- semi-sync


def semisync_status(primary: Remote) -> dict[str, str]:
    """The primary's Rpl_semi_sync_master_* status variables."""
    rows = dbcluster.mysql(primary, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%';")
    return {row[0]: row[1] for row in rows if len(row) == 2}


def wait_semisync_on(site: Site, primary: Remote, timeout: float = 30) -> dict[str, str]:
    """Write through the site until the primary's semi-sync is ON (a replica acknowledged).

    Right after a start, the primary commits asynchronously until a replica's first
    acknowledgement turns semi-sync on: this is the warm-up before a test that counts
    semi-sync commits. Returns the status once on."""
    deadline = time.monotonic() + timeout
    while True:
        status = semisync_status(primary)
        if status.get("Rpl_semi_sync_master_status") == "ON":
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"semi-sync did not come on within {timeout:.0f} s: {status}")
        site.request("POST", "/api/notes", json.dumps({"text": "semi-sync warm-up"}), JSON)
        time.sleep(0.3)


# --------------------------------------------------------------------------- a real browser

BROWSER_PACKAGES = ("chromium", "chromium-driver", "libnss3-tools")
"""Debian packages the browser check needs on this machine."""
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class BrowserUnavailable(RuntimeError):
    """Chromium cannot run here; the message says what to install."""


def ensure_browser() -> None:
    """Install Debian's chromium, its driver and certutil when missing (as root), or say how."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER, "/usr/bin/certutil") if not os.path.exists(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise BrowserUnavailable(
            f"{', '.join(missing)} missing: run as root, or "
            f"`apt-get install {' '.join(BROWSER_PACKAGES)}`"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *BROWSER_PACKAGES]
    res = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:  # stale package lists: refresh them once and try again
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        res = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise BrowserUnavailable(
            f"apt-get install {' '.join(BROWSER_PACKAGES)} failed: {res.stderr.strip()[-500:]}"
        )


def nss_trusting_the_ca(home: Path, also: Sequence[Path] = ()) -> Path:
    """An NSS database under `home`/.pki/nssdb (where Chromium looks for it) that trusts the
    site CA for websites, made with certutil: the browser trusts the site the way a
    user who imported the CA would, with no flag that ignores certificate errors. `also`:
    more CA files to trust (the internal CA, for the monitor's own HTTPS)."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    db = f"sql:{nssdb}"
    cas = [(secrets.SITE_CA_NAME, secrets.site_ca_cert_path()), *((p.stem, p) for p in also)]
    for args in (
        ["-N", "--empty-password"],
        *(["-A", "-t", "C,,", "-n", name, "-i", str(path)] for name, path in cas),
    ):
        res = subprocess.run(
            ["certutil", "-d", db, *args], capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise BrowserUnavailable(f"certutil {args[0]}: {res.stderr.strip()}")
    return nssdb


@contextlib.contextmanager
def chromium(
    site: Site, home: Path, also_trust: Sequence[Path] = (), also_map: Sequence[str] = ()
) -> Iterator[Any]:
    """Headless Chromium (Debian's, driven by Selenium through Debian's chromedriver) that
    trusts the testbed CA and resolves the site's name to where this machine reaches it
    (and `also_map`'s "name address" pairs; `also_trust`: more CA files to trust).

    Selenium is given the driver and browser paths, so it never fetches a driver. As root,
    Chromium needs --no-sandbox (it refuses to start otherwise); no certificate flag is
    set."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ensure_browser()
    nss_trusting_the_ca(home, also_trust)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        f"--user-data-dir={home / 'profile'}",
        "--host-resolver-rules="
        + ", ".join(f"MAP {pair}" for pair in (f"{site.name} {site.entry.address}", *also_map)),
        "--window-size=1000,900",
        "--disable-gpu",
        "--no-first-run",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),
    ):
        options.add_argument(arg)
    env = dict(os.environ, HOME=str(home), SE_OFFLINE="true")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, env=env))
    try:
        yield driver
    finally:
        driver.quit()


def prometheus_get(topo: Topology, path: str, timeout: float = 10) -> bytes:
    """GET `path` from the monitor's Prometheus as the operator would: where this machine
    reaches it (forwarded port or inventory address), over HTTPS with the testbed CA and the
    operator's login when the topology's monitor_tls is on. The certificate is checked
    against the monitor's name, whichever address reaches it (an inventory may give one the
    certificate does not list, such as a management address)."""
    from provision import monitoring

    mon = monitoring.monitor_host(topo)
    assert mon is not None
    address, port = inventory.service_entry(topo, mon.name, "prometheus")
    if not monitoring.uses_tls(topo):
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=timeout) as res:
            return bytes(res.read())
    context = ssl.create_default_context(cafile=str(secrets.ca_cert_path()))
    user = monitoring.OPERATOR_USER
    login = f"{user}:{secrets.password(monitoring.password_secret(user))}"
    name = mon.name

    class Conn(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection((address, port), timeout)
            self.sock = context.wrap_socket(raw, server_hostname=name)

    conn = Conn(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={
            "Authorization": "Basic " + base64.b64encode(login.encode()).decode(),
        })  # fmt: skip
        res = conn.getresponse()
        body = res.read()
        if res.status != 200:
            raise urllib.error.HTTPError(path, res.status, res.reason, res.headers, None)
        return body
    finally:
        conn.close()


def forged_certificate(authority: secrets.KeyPair, dns: str, ip: str) -> secrets.KeyPair:
    """A server certificate for any name and address, signed with the CA's key directly (as
    a thief of the key would), bypassing secrets.leaf's own check of the CA's constraints:
    what the name-constraint tests present to OpenSSL and curl."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = serialization.load_pem_private_key(authority.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(dns), x509.IPAddress(ipaddress.ip_address(ip))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return secrets.KeyPair(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )


# --------------------------------------------------------------------------- wrk (bench/edge.py)

WRK = "wrk -t2 -c16 -d{seconds}s --latency"
POST_SCRIPT = (
    'wrk.method = "POST"\n'
    'wrk.body = \'{"text": "bench.edge"}\'\n'
    'wrk.headers["Content-Type"] = "application/json"\n'
)


@dataclass
class WrkResult:
    rps: float
    """wrk's Requests/sec: every answer counts, errors too (see non_2xx, socket_errors)."""
    p50_ms: float
    non_2xx: int
    socket_errors: int = 0
    """Connections that failed, reads or writes that failed, requests that timed out."""


def parse_wrk(text: str) -> WrkResult:
    """wrk's report: `Requests/sec:`, the 50 % line of --latency, non-2xx answers and socket
    errors (connect, read, write, timeout)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\b", text, re.M)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if not rps or not p50:
        raise ValueError(f"not a wrk report: {text[-300:]!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return WrkResult(
        float(rps.group(1)),
        float(p50.group(1)) * scale,
        int(bad.group(1)) if bad else 0,
        sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def wrk_command(url: str, host_header: str, route: str, seconds: int) -> str:
    script = ""
    if route == "write":
        script = f"printf %s {shlex.quote(POST_SCRIPT)} > /tmp/bench-edge-post.lua && "
    post = " -s /tmp/bench-edge-post.lua" if route == "write" else ""
    return (
        f"{script}{WRK.format(seconds=seconds)}{post} -H {shlex.quote('Host: ' + host_header)} "
        f"{shlex.quote(url)}"
    )
