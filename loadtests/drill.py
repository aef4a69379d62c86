"""Locust file of the fault drills (`fab drill ...`): qps.py's personas plus a history.

Every request, when it completes, becomes one JSON line in $DRILL_HISTORY (flushed at
once, so a drill that is cut short still has everything up to that moment):

    {"start": t, "end": t, "kind": "write", "method": "POST", "name": "/api/notes",
     "status": 201, "outcome": "ok", "server": "web1", "db": "web2",
     "text": "drill-1a2b3c4d ...", "note_id": 17, "error": "", "seen": []}

A successful list or read records in "seen" the drill's note texts it returned.

kind/outcome follow provision/drills/workload.py (`classify`), the one place those rules
live: a POST is "ok" only when answered 201, "fail" when refused before anything was
written (4xx, 503), "unknown" when it may have happened (no answer, 500, 502, 504).

Environment: DRILL_HISTORY (required), DRILL_PREFIX (the Writer's note texts start with it),
plus qps.py's LOAD_RATE and TESTBED_CA. The drill runner starts this file; by hand:

    DRILL_HISTORY=/tmp/h.jsonl DRILL_PREFIX=drill-test LOAD_RATE=2 \\
        .venv/bin/locust -f loadtests/drill.py --headless -u 5 -r 5 -t 20s
"""

from __future__ import annotations

# Locust first: importing it runs gevent's monkey-patching, which must happen before
# anything else imports socket or ssl (qps.py says the same and does the same).
from locust import events

# isort: split

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from locust.env import Environment
from qps import Browser, Reader, Writer

REPO_ROOT = Path(__file__).resolve().parents[1]

# The classification rules are pure and unit-tested without Locust, in the drill package.
# Loaded by path so that importing them does not import the rest of provision/ (Fabric,
# paramiko) into this gevent-patched process.
_spec = importlib.util.spec_from_file_location(
    "drill_workload_rules", REPO_ROOT / "provision" / "drills" / "workload.py"
)
assert _spec is not None and _spec.loader is not None
rules = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rules
_spec.loader.exec_module(rules)

__all__ = ["Browser", "Reader", "Writer"]  # the personas Locust runs (from qps.py)

_history: IO[str] | None = None
_prefix = os.environ.get("DRILL_PREFIX", "").strip()
"""The Writer's note texts start with it; reads record the notes they saw with it."""


@events.init.add_listener
def _open_history(environment: Environment, **_kwargs: Any) -> None:
    global _history
    path = os.environ.get("DRILL_HISTORY", "").strip()
    if not path:
        raise SystemExit("drill.py: set DRILL_HISTORY to the file the history goes to")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _history = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run


@events.quitting.add_listener
def _close_history(**_kwargs: Any) -> None:
    if _history is not None:
        _history.flush()


def _body(response: Any) -> Any:
    try:
        return json.loads(response.text or "")
    except (ValueError, TypeError, AttributeError):
        return None


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float | None,
    response: Any = None,
    context: dict[str, Any] | None = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    url: str | None = None,
    **_kwargs: Any,
) -> None:
    if _history is None:
        return
    status = int(getattr(response, "status_code", 0) or 0)
    headers = getattr(response, "headers", None) or {}
    method = request_type.upper()
    record = rules.history_record(
        method=method,
        name=name,
        url=url or "",
        status=status,
        start=start_time or 0.0,
        response_time_ms=response_time or 0.0,
        served_by=headers.get("X-Served-By"),
        # A write's answer names its id and database node; a read's, the notes it saw.
        body=_body(response) if status in (200, 201) else None,
        text=str((context or {}).get("text", "")),
        error=f"{exception}" if exception else "",
        prefix=_prefix,
    )
    _history.write(json.dumps(record, ensure_ascii=False) + "\n")
    _history.flush()
