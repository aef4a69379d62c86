"""The drill's workload: Locust, headless at a fixed rate, as a subprocess.

Locust is never imported here: importing it runs gevent's monkey-patching, which would
replace the sockets and threads under Fabric/paramiko in this process. So Locust runs as
a child process on `loadtests/drill.py` (the qps.py personas plus one JSON line per
request in `history.jsonl`), and is stopped with SIGINT, the path on which Locust still
writes its HTML report and final CSV (SIGTERM skips the HTML).

This module also holds the pure rules that turn one HTTP request into a history record
(`classify`): loadtests/drill.py loads this file by path inside the Locust process, and the
unit tests import it without Locust. Keep it free of third-party imports for that reason.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# --------------------------------------------------------------------------- pure rules

KINDS = {
    "/": "page",
    "/health": "health",
    "/api/notes/[id]": "read",
}
LIST_NAME = re.compile(r"^/api/notes\?")
NOTE_URL = re.compile(r"/api/notes/(\d+)(?:\?|$)")

# A POST answered with one of these never reached the database: a 4xx is the app (or
# HAProxy) refusing the request itself, and 503 is a refusal before anything was written
# (the app's "no writable database", or HAProxy's "no server could take it").
REFUSED = frozenset({503})
# No answer at all (status 0: timeout, reset), or an answer that does not say whether the
# INSERT committed: the write "may have happened".
UNKNOWN = frozenset({0, 500, 502, 504})


def kind_of(method: str, name: str) -> str:
    """page | health | list | read | write, from Locust's request name."""
    if method.upper() == "POST":
        return "write"
    if name in KINDS:
        return KINDS[name]
    if name.startswith("/api/notes/"):
        return "read"
    if LIST_NAME.match(name) or name == "/api/notes":
        return "list"
    return "other"


def outcome_of(method: str, status: int) -> str:
    """ok | fail | unknown, as the checker needs it (see the module docstring of checker).

    GET: ok iff 200, else fail (a read changes nothing, so "unknown" is never needed).
    POST: ok iff 201; fail for a 4xx or 503 (refused before anything was written);
    unknown for no response, 500, 502, 504, and any other status (which the app never
    sends for a POST, so nothing can be assumed about it).
    """
    if method.upper() != "POST":
        return "ok" if status == 200 else "fail"
    if status == 201:
        return "ok"
    if 400 <= status < 500 or status in REFUSED:
        return "fail"
    return "unknown"


def classify(method: str, name: str, status: int) -> tuple[str, str]:
    """(kind, outcome) of one request."""
    return kind_of(method, name), outcome_of(method, status)


def history_record(
    *,
    method: str,
    name: str,
    url: str,
    status: int,
    start: float,
    response_time_ms: float,
    served_by: str | None,
    body: Any,
    text: str,
    error: str,
    prefix: str = "",
) -> dict[str, Any]:
    """One line of history.jsonl. `body` is the parsed JSON answer (or None). A successful
    read or list records the texts of the notes it returned that start with `prefix` (the
    drill's own), so the checker can tell whether a reader saw a write the cluster lost."""
    kind, outcome = classify(method, name, status)
    note_id: int | None = None
    db = ""
    # Only an acknowledged write names its row and the node that committed it.
    if kind == "write" and status == 201 and isinstance(body, Mapping):
        if isinstance(body.get("id"), int):
            note_id = body["id"]
        if isinstance(body.get("db"), str):
            db = body["db"]
    elif kind == "read":
        match = NOTE_URL.search(url)
        note_id = int(match.group(1)) if match else None
    seen = seen_texts(body, prefix) if kind in ("list", "read") and status == 200 else []
    return {
        "start": round(start, 6),
        "end": round(start + response_time_ms / 1000.0, 6),
        "kind": kind,
        "method": method.upper(),
        "name": name,
        "status": status or None,  # null: no response at all (timeout, reset)
        "outcome": outcome,
        "server": served_by or "",
        "db": db,
        "text": text,
        "note_id": note_id,
        "error": error[:300],
        "seen": seen,
    }


def seen_texts(body: Any, prefix: str) -> list[str]:
    """The texts starting with `prefix` in a list's answer ({"notes": [...]}) or a single
    note's ({"id": .., "text": ..}); none without a prefix."""
    if not prefix or not isinstance(body, Mapping):
        return []
    notes = body.get("notes") if "notes" in body else [body]
    if not isinstance(notes, list):
        return []
    texts = [n.get("text") for n in notes if isinstance(n, Mapping)]
    # "<prefix> <uuid> ...": the prefix and a space, as the final counts select them.
    return [t for t in texts if isinstance(t, str) and t.startswith(prefix + " ")]


def new_prefix() -> str:
    """Every note a drill writes starts with this, so its rows can be counted afterwards."""
    return f"drill-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- the process

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "drill.py"
STOP_WAIT = 40.0
"""Seconds to wait for Locust to finish after SIGINT (stop timeout + writing reports)."""
USER_STOP_TIMEOUT = 12
"""--stop-timeout: each user finishes the request it is making (network timeout is 10 s), so
every request sent is in the history with its outcome rather than cut off unrecorded."""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class WorkloadError(RuntimeError):
    pass


@dataclass
class Workload:
    """Locust writing into `folder`: history.jsonl, locust_*.csv, locust.html, locust.log."""

    folder: Path
    host: str
    users: int
    rate: float
    run_time: int
    ca_file: Path
    prefix: str = field(default_factory=new_prefix)
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    _log: IO[bytes] | None = None

    @property
    def history(self) -> Path:
        return self.folder / "history.jsonl"

    @property
    def log_path(self) -> Path:
        return self.folder / "locust.log"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "locust",
            "-f", str(LOCUSTFILE),
            "--headless",
            "--host", self.host,
            "--users", str(self.users),
            # All users at once: the fixed rate holds from the first second of warm-up.
            "--spawn-rate", str(self.users),
            "--run-time", f"{self.run_time}s",
            "--stop-timeout", str(USER_STOP_TIMEOUT),
            "--csv", str(self.folder / "locust"),
            "--html", str(self.folder / "locust.html"),
            "--only-summary",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LOAD_RATE=f"{self.rate:g}",
            DRILL_HISTORY=str(self.history),
            DRILL_PREFIX=self.prefix,
            TESTBED_CA=str(self.ca_file),
        )
        # Locust's own thresholds do not decide a drill (the checker does); keep them from
        # printing FAILED for the failures a fault is expected to cause.
        env.setdefault("LOCUST_MAX_FAILURE_RATIO", "1")
        env.setdefault("LOCUST_MAX_P95_MS", "1000000")
        return env

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.history.touch()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=LOCUSTFILE.parents[1],
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C at the terminal reaches the drill runner, which
            # heals the fault first and then stops Locust itself (with SIGINT, see stop()).
            start_new_session=True,
            # SIGINT as Locust expects it: a process started in the background by a shell
            # without job control (a CI runner, `cmd &` in a script) inherits SIGINT
            # ignored, and Locust would then never stop on it (stop() waited 40 s each time).
            preexec_fn=_default_sigint,
        )
        time.sleep(1.5)
        if self.proc.poll() is not None:
            self.exit_code = self.proc.returncode
            raise WorkloadError(
                f"Locust exited at once with code {self.exit_code}: {self.log_tail()}"
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def requests_recorded(self) -> int:
        try:
            with self.history.open("rb") as fh:
                return sum(1 for _ in fh)
        except OSError:
            return 0

    def stop(self) -> int | None:
        """SIGINT, then wait; SIGKILL only if Locust does not finish. Returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.exit_code = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.exit_code

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no locust.log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def reports(self) -> dict[str, bool]:
        """Which of Locust's report files exist (checked after stop)."""
        names = ["locust.html", "locust_stats.csv", "locust_stats_history.csv"]
        return {n: (self.folder / n).is_file() for n in names}
