"""Load test for the testbed site (www.foobar.com behind HAProxy on https://127.0.0.1:8443).

Three personas, each making exactly one request per task so that, in fixed-rate mode,
total requests/s = users x LOAD_RATE:

* Browser (weight 3): GET / and GET /health, checks the page and the health JSON.
* Reader (weight 5): GET /api/notes?limit=10 and GET /api/notes/<id> of ids it has seen.
* Writer (weight 2): POST /api/notes with a unique text, checks 201 and the echoed text.

Environment variables:

* TESTBED_CA: CA certificate to trust (default: <repo>/.testbed/secrets/site-ca.crt). Nothing
  else is trusted, and the server's certificate must match the target address.
* LOAD_RATE: fixed rate in requests per second *per user* (constant_throughput); unset
  means think time between(0.5, 2).
* DRILL_PREFIX: what the Writer's note texts start with (default "locust"); a fault drill
  sets its own, to count its rows afterwards (loadtests/drill.py).

Thresholds (--max-failure-ratio, --max-p95-ms) decide the exit code, see loadtests/README.md.
Run as a Locust master (`fab load --workers N`), it also prints how many workers sent
requests and, with --csv PREFIX, writes them to PREFIX_workers.json.
The target must be the testbed itself (127.0.0.1, localhost, 192.168.56.0/21, or a machine
or site address listed in the inventory file named by $TESTBED_INVENTORY): anything else is
refused before a single request is sent.
"""

from __future__ import annotations

# Locust first: importing it runs gevent's monkey-patching, which must happen before
# anything else imports socket or ssl.
import locust.log
from locust import FastHttpUser, between, constant_throughput, events, task

# isort: split

import ipaddress
import json
import logging
import os
import random
import re
import ssl
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import yaml
from locust.argument_parser import LocustArgumentParser
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.exception import StopTest
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("qps")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CA = REPO_ROOT / ".testbed" / "secrets" / "site-ca.crt"
DEFAULT_HOST = "https://127.0.0.1:8443"

# Where load may be aimed: this machine, or the testbed's own host-only networks.
ALLOWED_HOSTNAMES = frozenset({"127.0.0.1", "localhost"})
ALLOWED_NETWORK = ipaddress.ip_network("192.168.56.0/21")

SERVED_BY = re.compile(r"Served by <b id=server>([^<]+)</b>")
NOTE_FIELDS = {"id": int, "text": str, "server": str, "created": str}


# --- safety -----------------------------------------------------------------------------


def target_problem(url: str | None) -> str | None:
    """Return why `url` must not be load-tested, or None if it is one of the testbed's."""
    if not url:
        return "no target host given"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"target {url!r} is not an http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        return f"target {url!r} contains credentials"
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return f"target {url!r} has an invalid port"
    hostname = parts.hostname or ""
    if hostname in ALLOWED_HOSTNAMES:
        return None
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        address = None
    if address is not None and address.version == 4 and address in ALLOWED_NETWORK:
        return None
    if hostname in inventory_addresses():
        return None
    return (
        f"refusing to aim load at {url!r}: only 127.0.0.1, localhost, the testbed's "
        f"{ALLOWED_NETWORK} addresses and the machines of $TESTBED_INVENTORY are allowed"
    )


def inventory_addresses() -> frozenset[str]:
    """The machines' and the site's addresses in the inventory file named by
    $TESTBED_INVENTORY (docs/inventory.md): the testbed's own servers."""
    path = os.environ.get("TESTBED_INVENTORY")
    if not path:
        return frozenset()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return frozenset()
    if not isinstance(data, dict):
        return frozenset()
    found = {
        str(spec["host"])
        for spec in (data.get("hosts") or {}).values()
        if isinstance(spec, dict) and "host" in spec
    }
    site = data.get("site")
    if isinstance(site, dict) and site.get("address"):
        found.add(str(site["address"]))
    return frozenset(found)


def ca_path() -> Path:
    return Path(os.environ.get("TESTBED_CA") or DEFAULT_CA)


def testbed_ssl_context(*_args: Any, **_kwargs: Any) -> ssl.SSLContext:
    """SSL context that trusts only the testbed CA, with hostname checking.

    geventhttpclient calls this as factory(cafile=<certifi bundle>); that argument is
    ignored on purpose so that public CAs are not trusted.
    """
    return ssl.create_default_context(cafile=str(ca_path()))


def _wait_time() -> Callable[..., float]:
    raw = os.environ.get("LOAD_RATE", "").strip()
    if not raw:
        return between(0.5, 2)
    try:
        rate = float(raw)
    except ValueError:
        raise SystemExit(f"qps.py: LOAD_RATE={raw!r} is not a number") from None
    if not 0 < rate < float("inf"):
        raise SystemExit(f"qps.py: LOAD_RATE={raw!r} must be a positive number")
    return constant_throughput(rate)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: LocustArgumentParser, **_kwargs: Any) -> None:
    parser.add_argument(
        "--max-failure-ratio",
        type=float,
        default=0.01,
        env_var="LOCUST_MAX_FAILURE_RATIO",
        help="Exit 1 if failed/total requests is above this (default 0.01).",
    )
    parser.add_argument(
        "--max-p95-ms",
        type=float,
        default=1000.0,
        env_var="LOCUST_MAX_P95_MS",
        help="Exit 1 if the 95th percentile of all requests is above this, in ms (default 1000).",
    )


@events.init.add_listener
def _check_target(environment: Environment, **_kwargs: Any) -> None:
    target = environment.host or DEFAULT_HOST
    problem = target_problem(target)
    if problem:
        raise SystemExit(f"qps.py: {problem}")
    if urlsplit(target).scheme == "https" and not ca_path().is_file():
        raise SystemExit(
            f"qps.py: testbed CA not found at {ca_path()} "
            "(set TESTBED_CA, or see `fab ca` for its path)"
        )
    rate = os.environ.get("LOAD_RATE", "").strip()
    if rate:
        log.info("fixed-rate mode: %s requests/s per user (total = users x %s)", rate, rate)


@events.quitting.add_listener
def _enforce_thresholds(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master judges the whole run
    options = environment.parsed_options
    max_failure_ratio = float(getattr(options, "max_failure_ratio", 0.01))
    max_p95_ms = float(getattr(options, "max_p95_ms", 1000.0))
    total = environment.stats.total

    if total.num_requests == 0:
        if options is not None and options.headless:
            print("qps.py thresholds: FAILED: no requests were made", flush=True)
            environment.process_exit_code = 1
        return

    failure_ratio = total.fail_ratio
    p95_ms = total.get_response_time_percentile(0.95) or 0
    failed = []
    if failure_ratio > max_failure_ratio:
        failed.append(f"failure ratio {failure_ratio:.4f} > max {max_failure_ratio:g}")
    if p95_ms > max_p95_ms:
        failed.append(f"p95 {p95_ms:.0f} ms > max {max_p95_ms:g} ms")
    if failed:
        print(f"qps.py thresholds: FAILED: {'; '.join(failed)}", flush=True)
        environment.process_exit_code = 1
        return

    print(
        f"qps.py thresholds: OK: failure ratio {failure_ratio:.4f} <= {max_failure_ratio:g}, "
        f"p95 {p95_ms:.0f} ms <= {max_p95_ms:g} ms ({total.num_requests} requests)",
        flush=True,
    )
    # Failures below the threshold are accepted, so they must not turn into Locust's default
    # exit code 1; unhandled exceptions (in tasks or event handlers) still count.
    runner = environment.runner
    if runner is not None and not runner.exceptions and not locust.log.unhandled_greenlet_exception:
        environment.process_exit_code = 0


# --- distributed runs: what each worker reported -----------------------------------------

_worker_totals: dict[str, dict[str, int]] = {}


@events.worker_report.add_listener
def _count_worker_report(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    """On a master: add up each worker's requests from the statistics it sends (every 3 s,
    and once more when it quits), the same reports Locust adds into the master's totals."""
    total = data.get("stats_total") or {}
    seen = _worker_totals.setdefault(client_id, {"requests": 0, "failures": 0, "users": 0})
    seen["requests"] += int(total.get("num_requests") or 0)
    seen["failures"] += int(total.get("num_failures") or 0)
    seen["users"] = max(seen["users"], int(data.get("user_count") or 0))


@events.quitting.add_listener
def _report_workers(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        return
    options = environment.parsed_options
    expected = int(getattr(options, "expect_workers", 0) or 0)
    workers = {
        f"worker-{runner.get_worker_index(client_id)}": {"client_id": client_id, **seen}
        for client_id, seen in _worker_totals.items()
    }
    reported = sorted(w["requests"] for w in workers.values() if w["requests"] > 0)
    print(
        f"qps.py workers: {len(reported)} of {expected} expected sent requests "
        f"({', '.join(str(n) for n in reported) or 'none'})",
        flush=True,
    )
    prefix = getattr(options, "csv_prefix", None)
    if prefix:
        report = {"expected": expected, "reported": len(reported), "workers": workers}
        Path(f"{prefix}_workers.json").write_text(json.dumps(report, indent=2) + "\n")


# --- checks: each returns what is wrong with a response, or None --------------------------


def _json(response: ResponseContextManager) -> Any:
    try:
        return response.json()
    except (ValueError, TypeError):  # not JSON, or no body at all
        return None


def _status_problem(response: ResponseContextManager, expected: int) -> str | None:
    if response.status_code == expected:
        return None
    if not response.status_code:  # connection, TLS or timeout error: no HTTP status at all
        return f"no response: {response.error!r:.160}"
    return f"status {response.status_code}, expected {expected}: {response.text!r:.120}"


def _served_by_problem(response: ResponseContextManager, server: str) -> str | None:
    """X-Served-By must be present and name the backend the body says served it."""
    header = response.headers.get("X-Served-By")
    if not header:
        return "no X-Served-By header"
    if header != server:
        return f"X-Served-By {header!r} but the body says {server!r}"
    return None


def _note_problem(note: Any) -> str | None:
    if not isinstance(note, dict):
        return f"note is not an object: {note!r:.80}"
    for field, kind in NOTE_FIELDS.items():
        if not isinstance(note.get(field), kind):
            return f"note field {field!r} missing or not {kind.__name__}: {note!r:.120}"
    return None


def check_home(response: ResponseContextManager) -> str | None:
    if problem := _status_problem(response, 200):
        return problem
    match = SERVED_BY.search(response.text or "")
    if not match:
        return "page does not say 'Served by <b id=server>NAME</b>'"
    return _served_by_problem(response, match.group(1))


def check_health(response: ResponseContextManager) -> str | None:
    if problem := _status_problem(response, 200):
        return problem
    body = _json(response)
    if not isinstance(body, dict) or body.get("status") != "ok":
        return f"unhealthy: {response.text!r:.120}"
    if not isinstance(body.get("server"), str) or not body["server"]:
        return "health names no server"
    return _served_by_problem(response, body["server"])


def check_note_list(response: ResponseContextManager, limit: int) -> str | None:
    if problem := _status_problem(response, 200):
        return problem
    body = _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("notes"), list):
        return f"no notes list: {response.text!r:.120}"
    if len(body["notes"]) > limit:
        return f"limit={limit} returned {len(body['notes'])} notes"
    for note in body["notes"]:
        if problem := _note_problem(note):
            return problem
    return None


def check_note(response: ResponseContextManager, note_id: int) -> str | None:
    if problem := _status_problem(response, 200):
        return f"note {note_id}: {problem}"
    body = _json(response)
    if problem := _note_problem(body):
        return problem
    if body["id"] != note_id:
        return f"asked for note {note_id}, got {body['id']}"
    return None


def check_created(response: ResponseContextManager, text: str) -> str | None:
    if problem := _status_problem(response, 201):
        return problem
    body = _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("id"), int):
        return f"no note id: {response.text!r:.120}"
    if body.get("text") != text:
        return f"sent {text!r}, got back {body.get('text')!r:.120}"
    if not body.get("server"):
        return "created note names no server"
    return None


def _finish(response: ResponseContextManager, problem: str | None) -> None:
    if problem:
        response.failure(problem)
    else:
        response.success()


# --- personas -----------------------------------------------------------------------------


class TestbedUser(FastHttpUser):
    """Common settings: testbed target, testbed CA only, no redirects."""

    abstract = True
    host = DEFAULT_HOST
    wait_time = _wait_time()
    insecure = False  # verify the certificate chain *and* that it names the target
    ssl_context_factory = staticmethod(testbed_ssl_context)
    max_redirects = 0  # a redirect must not take the load anywhere else
    network_timeout = 10.0
    connection_timeout = 5.0

    def __init__(self, environment: Environment) -> None:
        # Also covers a host typed into the web UI, which bypasses the init check.
        problem = target_problem(self.host)
        if problem:
            raise StopTest(f"qps.py: {problem}")
        super().__init__(environment)


class Browser(TestbedUser):
    """Looks at the site: the page and the health check."""

    weight = 3

    @task(3)
    def home(self) -> None:
        with self.client.get("/", name="/", catch_response=True) as response:
            _finish(response, check_home(response))

    @task(1)
    def health(self) -> None:
        with self.client.get("/health", name="/health", catch_response=True) as response:
            _finish(response, check_health(response))


class Reader(TestbedUser):
    """Lists the latest notes and reads single notes it has seen listed."""

    weight = 5
    limit = 10

    def on_start(self) -> None:
        self.seen_ids: deque[int] = deque(maxlen=200)

    @task(1)
    def list_notes(self) -> None:
        url = f"/api/notes?limit={self.limit}"
        with self.client.get(url, name=url, catch_response=True) as response:
            problem = check_note_list(response, self.limit)
            if not problem:
                self.seen_ids.extend(note["id"] for note in response.json()["notes"])
            _finish(response, problem)

    @task(3)
    def get_note(self) -> None:
        if not self.seen_ids:
            self.list_notes()  # nothing seen yet; still one request per task
            return
        note_id = random.choice(self.seen_ids)
        with self.client.get(
            f"/api/notes/{note_id}", name="/api/notes/[id]", catch_response=True
        ) as response:
            _finish(response, check_note(response, note_id))


class Writer(TestbedUser):
    """Creates notes, each with a unique text, and checks the echo."""

    weight = 2

    @task
    def create_note(self) -> None:
        # Unique, and not only ASCII: the text must survive JSON, the app and MariaDB unchanged.
        prefix = os.environ.get("DRILL_PREFIX", "").strip() or "locust"
        text = f"{prefix} {uuid4().hex} ünïcødé ✓"
        # The text travels in the request's context so a history listener can record it.
        with self.client.post(
            "/api/notes",
            json={"text": text},
            name="/api/notes",
            catch_response=True,
            context={"text": text},
        ) as response:
            _finish(response, check_created(response, text))
