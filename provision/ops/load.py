"""`fab load`: loadtests/qps.py's personas against the site, headless, at a fixed rate, from
one Locust process or from Locust's own master and N workers on this machine.

With --workers 1 it is one plain `locust --headless` run. With N > 1 it starts a Locust
master bound to 127.0.0.1 only (`--master --expect-workers N`) and N `locust --worker`
processes that connect to it: Locust's distributed engine, as a user who outgrows one load
process (one CPU core: Locust is single-threaded) would run it, and as they would run it
across machines (docs.locust.io, "Distributed load generation"). The master shares the
users among the workers, adds up their statistics and writes the reports.

Every process it starts is its own process group, and every one is stopped (SIGTERM,
then SIGKILL) whatever happens: a bad input, a site that does not answer, a worker that
never connects, Ctrl-C. The target is the site's entry from this machine
(provision.inventory.site_entry: 127.0.0.1's forwarded port, the balancers' floating
address, or the inventory's site) and qps.py refuses any other in every process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from provision import PROJECT_ROOT, STATE_DIR, inventory, secrets
from provision.ops.common import TaskError, load

LOCUSTFILE = PROJECT_ROOT / "loadtests" / "qps.py"
REPORTS = STATE_DIR / "loadtests"
MASTER_HOST = "127.0.0.1"
"""Where the master listens and the workers connect: this machine only (Locust's default
binds every interface, and anyone reaching the port could join as a worker)."""
STOP_TIMEOUT = 10
"""--stop-timeout: at the deadline each user finishes the request it is making (qps.py's
network timeout is 10 s), so the final counts hold every request sent."""
FINISH_GRACE = 60.0
"""Seconds past run time + stop timeout before a master that has not exited is killed."""
STOP_WAIT = 15.0
"""Seconds a process gets to exit on SIGTERM (Locust writes its reports then) before SIGKILL."""

Say = Callable[[str], None]

# What the supervisor reads in the master's log (Locust 2.47's own lines).
RUN_STARTED = "Run time limit set"
"""Logged once the master has every worker it expects and starts the users."""
GAVE_UP = "Gave up waiting for workers"
"""--expect-workers-max-wait ran out."""
CONNECTED = "connected"
""""N workers connected." as each arrives, "Waiting for workers to be ready, N of M connected"."""
WATCHED = (RUN_STARTED, GAVE_UP, CONNECTED)


@dataclass(frozen=True)
class Plan:
    """One `fab load` run: what to start and with which settings."""

    url: str
    workers: int
    users: int
    rate: float
    seconds: int
    prefix: Path
    ca: Path
    inventory_file: str | None = None
    connect_timeout: int = 30
    master_port: int = 5557

    @property
    def distributed(self) -> bool:
        return self.workers > 1

    def _locust(self) -> list[str]:
        return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]

    def master_command(self) -> list[str]:
        """The single process, or the master: it runs the clock and writes every report."""
        cmd = [
            *self._locust(),
            "--headless",
            "--host", self.url,
            "--users", str(self.users),
            # Every user at once: the fixed rate holds from the first second.
            "--spawn-rate", str(self.users),
            "--run-time", f"{self.seconds}s",
            "--stop-timeout", str(STOP_TIMEOUT),
            "--csv", str(self.prefix),
            "--html", f"{self.prefix}.html",
            # Final counts, written after the last request ended (the CSV is written before).
            "--json-file", str(self.prefix),
        ]  # fmt: skip
        if self.distributed:
            cmd += [
                "--master",
                "--master-bind-host", MASTER_HOST,
                "--master-bind-port", str(self.master_port),
                "--expect-workers", str(self.workers),
                "--expect-workers-max-wait", str(self.connect_timeout),
            ]  # fmt: skip
        return cmd

    def worker_command(self) -> list[str]:
        # --host too: qps.py checks the target in every process, before the master sends it.
        return [
            *self._locust(),
            "--worker",
            "--master-host", MASTER_HOST,
            "--master-port", str(self.master_port),
            "--host", self.url,
        ]  # fmt: skip

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = dict(base, LOAD_RATE=f"{self.rate:g}", TESTBED_CA=str(self.ca))
        if self.inventory_file:
            # qps.py allows the inventory's own addresses as targets only when it knows it.
            env[inventory.INVENTORY_ENV] = str(Path(self.inventory_file).resolve())
        return env

    @property
    def json_report(self) -> Path:
        return Path(f"{self.prefix}.json")

    @property
    def workers_report(self) -> Path:
        """Written by qps.py on a master: what each worker reported (see qps.py)."""
        return Path(f"{self.prefix}_workers.json")

    def worker_log(self, index: int) -> Path:
        return Path(f"{self.prefix}_worker{index}.log")


def validate(workers: int, users: int, rate: float, seconds: int, connect_timeout: int) -> None:
    """Refuse what cannot make a meaningful run, naming the option."""
    if workers < 1:
        raise TaskError(f"--workers must be 1 or more, got {workers}")
    if users < 1:
        raise TaskError(f"--users must be 1 or more, got {users}")
    if users < workers:
        raise TaskError(
            f"--users {users} is fewer than --workers {workers}: Locust would leave "
            f"{workers - users} worker(s) without a user"
        )
    if not (rate > 0 and math.isfinite(rate)):
        raise TaskError(f"--rate must be a positive number of requests/s per user, got {rate:g}")
    if seconds < 1:
        raise TaskError(f"--seconds must be 1 or more, got {seconds}")
    if connect_timeout < 1:
        raise TaskError(f"--connect-timeout must be 1 or more, got {connect_timeout}")


def default_prefix(now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return REPORTS / f"load-{stamp}"


def free_port(host: str = MASTER_HOST) -> int:
    """A port nothing listens on now, for the master (two runs must not meet on 5557)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def plan(
    workers: int,
    users: int,
    rate: float,
    seconds: int,
    out: str = "",
    topology: str = "",
    inventory_file: str = "",
    connect_timeout: int = 30,
) -> Plan:
    validate(workers, users, rate, seconds, connect_timeout)
    topo = load(topology)
    try:
        url = inventory.site_entry(topo, inventory_file or None).url()
    except inventory.InventoryError as exc:
        raise TaskError(f"where is the site? {exc}") from None
    return Plan(
        url=url,
        workers=workers,
        users=users,
        rate=rate,
        seconds=seconds,
        prefix=Path(out).resolve() if out else default_prefix(),
        ca=secrets.site_ca_cert_path(),
        inventory_file=inventory_file or None,
        connect_timeout=connect_timeout,
        master_port=free_port() if workers > 1 else 5557,
    )


def preflight(p: Plan, timeout: float = 5.0) -> None:
    """The site answers GET /health with the site CA: else no Locust is started."""
    if not p.ca.is_file():
        raise TaskError(
            f"the site CA is not at {p.ca}: is the testbed deployed? (./testbed up, `fab ca`)"
        )
    ctx = ssl.create_default_context(cafile=str(p.ca))
    url = f"{p.url}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TaskError(
            f"the site does not answer at {url}: {reason} "
            "(is the testbed up? ./testbed status; ./testbed up)"
        ) from None
    if status != 200:
        raise TaskError(f"the site answers {url} with status {status}, not 200: is it healthy?")


# --------------------------------------------------------------------------- the summary


@dataclass(frozen=True)
class Summary:
    requests: int
    failures: int
    seconds: float
    workers_expected: int = 1
    workers_reported: int = 1
    per_worker: tuple[int, ...] = ()

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def problems(self) -> list[str]:
        found = []
        if self.requests == 0:
            found.append("no request was made")
        if self.workers_reported < self.workers_expected:
            found.append(
                f"only {self.workers_reported} of {self.workers_expected} workers reported requests"
            )
        return found

    def line(self) -> str:
        head = "load: "
        if self.workers_expected > 1:
            each = ", ".join(str(n) for n in self.per_worker)
            head += (
                f"{self.workers_reported} of {self.workers_expected} workers reported ({each}); "
            )
        return (
            f"{head}{self.requests} requests, {self.failures} failures, "
            f"{self.rps:.1f} req/s over {self.seconds:.1f} s"
        )


def summarize(
    entries: Sequence[dict[str, Any]], workers: dict[str, Any] | None, p: Plan
) -> Summary:
    """From Locust's --json-file entries (one per request name) and qps.py's workers report.
    Requests/s are over the run time asked, as users x rate is."""
    requests = sum(int(e.get("num_requests") or 0) for e in entries)
    failures = sum(int(e.get("num_failures") or 0) for e in entries)
    seconds = float(p.seconds)
    if not p.distributed:
        return Summary(requests, failures, seconds)
    counts = [int(w.get("requests") or 0) for w in ((workers or {}).get("workers") or {}).values()]
    counts.sort(reverse=True)
    return Summary(
        requests,
        failures,
        seconds,
        workers_expected=p.workers,
        workers_reported=sum(1 for n in counts if n > 0),
        per_worker=tuple(counts),
    )


def read_summary(p: Plan) -> Summary:
    try:
        entries = json.loads(p.json_report.read_text())
    except (OSError, ValueError) as exc:
        raise TaskError(f"Locust wrote no final statistics ({p.json_report}: {exc})") from None
    workers = None
    if p.distributed:
        try:
            workers = json.loads(p.workers_report.read_text())
        except (OSError, ValueError):
            workers = None  # then no worker is counted as reporting: the summary says so
    return summarize(entries, workers, p)


# --------------------------------------------------------------------------- the processes


@dataclass
class Proc:
    """A Locust process in its own process group (so killing it kills whatever it forks)."""

    name: str
    popen: subprocess.Popen[str]
    log: IO[str] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=12))
    seen: dict[str, str] = field(default_factory=dict)
    """The last line of its output with each of WATCHED in it."""
    reader: threading.Thread | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self) -> int:
        """Its exit code, once its last line of output has been read."""
        code = self.popen.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        return code

    def last_lines(self) -> str:
        if self.log is not None:
            self.log.flush()
            try:
                lines = Path(self.log.name).read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            return " | ".join(lines[-8:])
        return " | ".join(self.tail)

    def stop(self) -> None:
        """SIGTERM to its group (Locust stops its users and writes its reports), SIGKILL
        if it has not exited after STOP_WAIT seconds."""
        for sig, wait in ((signal.SIGTERM, STOP_WAIT), (signal.SIGKILL, 5.0)):
            if not self.alive():
                break
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # Its group may hold children of its own after it exited.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.log is not None:
            self.log.close()


def spawn(
    name: str, cmd: list[str], env: dict[str, str], log_path: Path | None, echo: Say | None
) -> Proc:
    """Start `cmd` in its own session; its output into `log_path`, or line by line to
    `echo` (keeping the last lines for an error message)."""
    log = log_path.open("w") if log_path is not None else None
    popen = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own session: Ctrl-C reaches `fab` alone, which stops each process itself.
        start_new_session=True,
    )
    proc = Proc(name, popen, log)
    if log is None:
        assert popen.stdout is not None
        stream = popen.stdout

        def pump() -> None:
            for raw in stream:
                line = raw.rstrip()
                proc.tail.append(line)
                for marker in WATCHED:
                    if marker in line:
                        proc.seen[marker] = line
                if echo is not None:
                    echo(line)

        proc.reader = threading.Thread(target=pump, name=f"{name}-output", daemon=True)
        proc.reader.start()
    return proc


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def started(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Every process in `procs` (appended to while inside) is stopped on the way out, the
    master first: it tells its workers to quit. A SIGTERM to `fab` goes the same way
    (Python's default would end it at once and leave them running)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()
        if main:
            signal.signal(signal.SIGTERM, previous)


def _started_run(master: Proc) -> bool:
    return RUN_STARTED in master.seen


def supervise(p: Plan, master: Proc, workers: Sequence[Proc], clock: Callable[[], float]) -> int:
    """Wait for the master to finish; its exit code. Raises TaskError (the caller stops every
    process) when a worker dies before the run starts, the workers do not all connect in
    time, or the master outlives its run."""
    begun = clock()
    run_started: float | None = None
    while master.alive():
        now = clock()
        if run_started is None:
            if _started_run(master):
                run_started = now
            else:
                for w in workers:
                    if not w.alive():
                        raise TaskError(
                            f"{w.name} exited with code {w.popen.returncode} before the run "
                            f"started: {w.last_lines()}"
                        )
                # Locust's own --expect-workers-max-wait ends the master first; this is
                # the backstop should it hang.
                if now - begun > p.connect_timeout + 15:
                    raise TaskError(_not_connected(p, master))
        elif now - run_started > p.seconds + STOP_TIMEOUT + FINISH_GRACE:
            raise TaskError(
                f"the Locust master has not finished {FINISH_GRACE:.0f} s after its run"
            )
        time.sleep(0.2)
    code = master.wait()
    if run_started is None and not _started_run(master):
        if p.distributed and GAVE_UP in master.seen:
            raise TaskError(_not_connected(p, master))
        raise TaskError(
            f"Locust exited with code {code} before the run started: {master.last_lines()}"
        )
    return code


def _not_connected(p: Plan, master: Proc) -> str:
    seen = master.seen.get(CONNECTED, "no worker reported ready").strip()
    return (
        f"the {p.workers} workers did not all connect to the master on "
        f"{MASTER_HOST}:{p.master_port} within {p.connect_timeout} s (last: {seen})"
    )


def run(p: Plan, say: Say) -> tuple[int, Summary]:
    """Preflight, then the run; Locust's exit code and the summary."""
    preflight(p)
    p.prefix.parent.mkdir(parents=True, exist_ok=True)
    env = p.environment(dict(os.environ))
    mode = (
        f"a Locust master on {MASTER_HOST}:{p.master_port} and {p.workers} workers"
        if p.distributed
        else "one Locust process"
    )
    say(
        f"load: {p.users} users x {p.rate:g} req/s = {p.users * p.rate:g} req/s at most on "
        f"{p.url} for {p.seconds} s, from {mode}; reports {_shown(p.prefix)}*"
    )
    with started([]) as procs:
        master = spawn("master", p.master_command(), env, None, say)
        procs.append(master)
        workers = []
        for i in range(1, p.workers + 1 if p.distributed else 1):
            worker = spawn(f"worker {i}", p.worker_command(), env, p.worker_log(i), None)
            procs.append(worker)
            workers.append(worker)
        code = supervise(p, master, workers, time.monotonic)
    return code, read_summary(p)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
