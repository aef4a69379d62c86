"""The recorded history of a fault drill: the files a runner writes, and how they are read.

A drill leaves one folder. The runner writes the five input files below while the drill
runs; :func:`load` reads them back into a :class:`History` for the checker
(:mod:`provision.drills.checker`) and the report (:mod:`provision.drills.report`), which
add ``summary.json``, ``summary.md`` and ``timeline.png`` to the same folder. Nothing here
touches a machine, so an old drill can be checked again and the checker can be tested on
hand-made histories.

All times are UNIX epoch seconds (float). One JSON object per line in ``.jsonl`` files.

``history.jsonl`` -- one line per HTTP request of the load generator::

    {"start": 1764390000.123, "end": 1764390000.140, "kind": "write", "method": "POST",
     "name": "/api/notes", "status": 201, "outcome": "ok", "server": "web1", "db": "web2",
     "text": "drill-1a2b3c 17", "note_id": 17, "error": ""}

* ``kind``: ``page`` | ``health`` | ``list`` | ``read`` (GETs) | ``write`` (POST). Any
  other kind (``other``) is loaded and counted, but only a web-tier drill checks it.
* ``status``: the HTTP status, or 0 (or null) when no response came (timeout, reset).
* ``outcome``: ``ok`` = acknowledged (200 for a GET, 201 for a write); ``fail`` = a
  definite failure (for a write: refused before the database was touched, e.g. 503 with
  a JSON error, or any 4xx); ``unknown`` = a write whose fate is unknown (timeout,
  connection reset, 500/502/504). A GET is never ``unknown``: any non-200 is ``fail``.
* ``server``: the web server that answered ("" if none); ``db``: the database node that
  committed the write (acknowledged writes only, else ""); ``text``: the unique note text
  (writes only; a retried POST reuses its text); ``note_id``: may be null; ``error``: free
  text. Keys beyond these are ignored.

``events.jsonl`` -- what the runner (and the database controller's log) did::

    {"t": 1764390003.0, "event": "fault-start", "detail": "SIGSTOP mariadbd on web1"}

``warmup-start``, ``fault-start``, ``fault-end``, ``settled``, ``load-stop`` and any other
name (``failover``...). The fault window is [first ``fault-start``, last ``fault-end``].
Without a ``fault-start`` the window is empty at the start of the drill (a baseline run);
without a ``fault-end`` it lasts to the end of the history (never healed).

``samples.jsonl`` -- each database node's state, sampled about every 0.5 s::

    {"t": 1764390003.5, "node": "web1", "writable": true, "detail": "primary"}

``writable`` is null when it could not be read (unreachable, or no answer in time).

``final.json`` -- the database after the drill (after the load stopped and settled)::

    {"primary": "web2", "writable": ["web2"], "unreachable": [],
     "counts": {"web2": {"drill-1a2b3c 17": 1}, "web1": {"drill-1a2b3c 17": 1}}}

``primary`` is null when there is none. ``counts`` holds, for each reachable node, how
many rows of the notes table carry each text written in this drill; a text absent from
the table is absent from the map.

``drill.json`` -- what the drill was::

    {"fault": "pause", "target": "web1", "role": "db-primary", "duration": 8,
     "users": 10, "rate": 2.0, "settle_after": 1764390025.0,
     "expect": {"db_fault": true, "web_fault": false}}

``settle_after``: from when at most one node may be writable (the runner sets it once the
failover settled after the heal); null means fault-end + 15 s. Other keys are kept in
:attr:`DrillInfo.extra` and shown in the report.

A ``.jsonl`` file whose last line is cut short (the writer was killed mid-line) loses
that line, with a note in :attr:`History.warnings`; anything else malformed raises a
:class:`DrillFileError` naming the file and the line. ``history.jsonl`` and
``drill.json`` must exist; missing events or samples read as empty; a missing
``final.json`` reads as "no final state" (no primary, no counts), which fails the checks
that need it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"
EVENTS_FILE = "events.jsonl"
SAMPLES_FILE = "samples.jsonl"
FINAL_FILE = "final.json"
DRILL_FILE = "drill.json"

GET_KINDS: tuple[str, ...] = ("page", "health", "list", "read")
KINDS: tuple[str, ...] = (*GET_KINDS, "write")
OUTCOMES: tuple[str, ...] = ("ok", "fail", "unknown")
DEFAULT_SETTLE_SECONDS = 15.0
"""When drill.json has no settle_after: how long after fault-end one writer is required."""


class DrillFileError(ValueError):
    """A drill file is malformed; the message names the file, the line and the problem."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Op:
    """One HTTP request of the load generator, as recorded in history.jsonl."""

    start: float
    end: float
    kind: str
    method: str
    name: str
    status: int | None
    outcome: str
    server: str = ""
    db: str = ""
    text: str = ""
    note_id: int | None = None
    error: str = ""
    seen: tuple[str, ...] = ()
    """The drill's own note texts a successful GET returned (a list, or one note)."""

    @property
    def is_write(self) -> bool:
        return self.kind == "write"

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Event:
    t: float
    event: str
    detail: str = ""


@dataclass(frozen=True)
class Sample:
    t: float
    node: str
    writable: bool | None
    detail: str = ""


@dataclass(frozen=True)
class Final:
    """The database after the drill. `recorded` is False when final.json was never written."""

    primary: str | None
    writable: tuple[str, ...] = ()
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    unreachable: tuple[str, ...] = ()
    recorded: bool = True

    def count(self, node: str, text: str) -> int:
        return self.counts.get(node, {}).get(text, 0)


@dataclass(frozen=True)
class Expectation:
    """Which tier the fault hits: it decides which invariants apply."""

    db_fault: bool = False
    web_fault: bool = False
    lb_fault: bool = False
    """The front door itself: a load balancer's haproxy, machine or links."""


@dataclass(frozen=True)
class DrillInfo:
    fault: str
    target: str
    role: str = ""
    duration: float = 0.0
    users: int = 0
    rate: float = 0.0
    settle_after: float | None = None
    expect: Expectation = Expectation()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "target": self.target,
            "role": self.role,
            "duration": self.duration,
            "users": self.users,
            "rate": self.rate,
            "settle_after": self.settle_after,
            "expect": {
                "db_fault": self.expect.db_fault,
                "web_fault": self.expect.web_fault,
                "lb_fault": self.expect.lb_fault,
            },
            **dict(self.extra),
        }


@dataclass(frozen=True)
class History:
    """Everything a drill recorded; ops, events and samples are sorted by time."""

    ops: tuple[Op, ...]
    events: tuple[Event, ...]
    samples: tuple[Sample, ...]
    final: Final
    info: DrillInfo
    warnings: tuple[str, ...] = ()

    @property
    def span(self) -> tuple[float, float]:
        """The earliest and latest time anything was recorded."""
        times = [t for op in self.ops for t in (op.start, op.end)]
        times += [e.t for e in self.events] + [s.t for s in self.samples]
        return (min(times), max(times)) if times else (0.0, 0.0)

    @property
    def fault_window(self) -> tuple[float, float]:
        """[first fault-start, last fault-end]; see the module docstring for the fallbacks."""
        starts = [e.t for e in self.events if e.event == "fault-start"]
        first, last = self.span
        if not starts:
            return (first, first)
        start = min(starts)
        ends = [e.t for e in self.events if e.event == "fault-end" and e.t >= start]
        return (start, max(ends) if ends else max(last, start))

    @property
    def has_fault(self) -> bool:
        """False for a baseline run: no fault-start was recorded."""
        return any(e.event == "fault-start" for e in self.events)

    @property
    def fault_start(self) -> float:
        return self.fault_window[0]

    @property
    def fault_end(self) -> float:
        return self.fault_window[1]

    @property
    def settle_after(self) -> float:
        """From when at most one database node may be writable."""
        if self.info.settle_after is not None:
            return self.info.settle_after
        return self.fault_end + DEFAULT_SETTLE_SECONDS

    def rel(self, t: float) -> float:
        """A time as seconds from fault-start, the origin of every report."""
        return t - self.fault_start

    @property
    def writes(self) -> tuple[Op, ...]:
        return tuple(op for op in self.ops if op.is_write)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every database node named by a sample, the final state or a write."""
        names = {s.node for s in self.samples} | set(self.final.counts)
        names |= set(self.final.writable) | set(self.final.unreachable)
        names |= {op.db for op in self.ops if op.db}
        if self.final.primary:
            names.add(self.final.primary)
        return tuple(sorted(names))


def load(folder: Path | str) -> History:
    """Read a drill folder; raises DrillFileError naming the file and line if malformed."""
    folder = Path(folder)
    warnings: list[str] = []
    ops = [_op(path, n, obj) for path, n, obj in _read_jsonl(folder / HISTORY_FILE, warnings)]
    events = [
        _event(path, n, obj)
        for path, n, obj in _read_jsonl(folder / EVENTS_FILE, warnings, required=False)
    ]
    samples = [
        _sample(path, n, obj)
        for path, n, obj in _read_jsonl(folder / SAMPLES_FILE, warnings, required=False)
    ]
    final_path = folder / FINAL_FILE
    if final_path.exists():
        final = _final(final_path, _read_json(final_path))
    else:
        final = Final(primary=None, recorded=False)
        warnings.append(f"{FINAL_FILE} is missing: the drill did not finish")
    drill_path = folder / DRILL_FILE
    if not drill_path.exists():
        raise DrillFileError(drill_path, None, "missing (the runner writes it first)")
    info = _drill(drill_path, _read_json(drill_path))
    return History(
        ops=tuple(sorted(ops, key=lambda op: (op.start, op.end))),
        events=tuple(sorted(events, key=lambda e: e.t)),
        samples=tuple(sorted(samples, key=lambda s: s.t)),
        final=final,
        info=info,
        warnings=tuple(warnings),
    )


def append_jsonl(path: Path | str, obj: object) -> None:
    """Append one object (a mapping or one of the dataclasses above) as one line.

    The line goes out in a single write on a file opened for appending, so lines from
    concurrent writers do not interleave and a killed writer leaves at most a cut-short
    last line, which :func:`load` tolerates.
    """
    line = json.dumps(_plain(obj), ensure_ascii=False, separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def write_json(path: Path | str, obj: object) -> None:
    """Write a JSON file atomically (temporary file, then rename): never half a file."""
    path = Path(path)
    data = _plain(obj)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=2)
            f.write("\n")
        # mkstemp makes the file private; drill files are reports, meant to be read.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(obj: object) -> Any:
    """A dataclass instance as a dict (Op, Event, Sample...); anything else as it is."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return obj


def _read_jsonl(
    path: Path, warnings: list[str], required: bool = True
) -> list[tuple[Path, int, dict[str, Any]]]:
    if not path.exists():
        if required:
            raise DrillFileError(path, None, "missing")
        return []
    data = path.read_bytes()
    # A complete file ends with a newline, so only an unterminated last piece can have
    # been cut short by a killed writer (possibly inside a multi-byte character).
    cut = data.rfind(b"\n") + 1
    try:
        head = data[:cut].decode("utf-8")
    except UnicodeDecodeError as e:
        raise DrillFileError(path, data[: e.start].count(b"\n") + 1, "not UTF-8") from None
    lines = head.split("\n")[:-1]
    unterminated = None
    if data[cut:]:
        unterminated = len(lines) + 1
        try:
            lines.append(data[cut:].decode("utf-8"))
        except UnicodeDecodeError:
            warnings.append(f"{path.name}: dropped the cut-short last line {unterminated}")
    rows: list[tuple[Path, int, dict[str, Any]]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if n == unterminated:
                warnings.append(f"{path.name}: dropped the cut-short last line {n}")
                continue
            raise DrillFileError(path, n, f"not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DrillFileError(path, n, f"expected a JSON object, got {type(obj).__name__}")
        rows.append((path, n, obj))
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DrillFileError(path, None, "not UTF-8") from None
    except json.JSONDecodeError as e:
        raise DrillFileError(path, e.lineno, f"not JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DrillFileError(path, None, f"expected a JSON object, got {type(obj).__name__}")
    return obj


class _Fields:
    """Typed access to one JSON object's keys, with errors naming the file and line."""

    _MISSING = object()

    def __init__(self, path: Path, line: int | None, obj: Mapping[str, Any]) -> None:
        self.path, self.line, self.obj = path, line, obj

    def _get(self, key: str, default: Any) -> Any:
        """The value of a key; a default stands in for a key that is absent or null."""
        value = self.obj.get(key)
        if value is not None:
            return value
        if default is self._MISSING:
            raise DrillFileError(self.path, self.line, f"{key!r} is missing")
        return default

    def fail(self, key: str, wanted: str, value: Any) -> DrillFileError:
        return DrillFileError(self.path, self.line, f"{key!r} must be {wanted}, not {value!r}")

    def number(self, key: str, default: Any = _MISSING) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "a number", value)
        return float(value)

    def opt_number(self, key: str) -> float | None:
        return None if self.obj.get(key) is None else self.number(key)

    def integer(self, key: str, default: Any = _MISSING) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer", value)
        return value

    def opt_integer(self, key: str) -> int | None:
        return None if self.obj.get(key) is None else self.integer(key)

    def string(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        if choices and value not in choices:
            raise self.fail(key, "one of " + ", ".join(choices), value)
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def opt_boolean(self, key: str) -> bool | None:
        return None if self.obj.get(key) is None else self.boolean(key)

    def names(self, key: str) -> tuple[str, ...]:
        return self._strings(key, "a list of names")

    def texts(self, key: str) -> tuple[str, ...]:
        return self._strings(key, "a list of texts")

    def _strings(self, key: str, wanted: str) -> tuple[str, ...]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, wanted, value)
        return tuple(value)


def _op(path: Path, line: int, obj: Mapping[str, Any]) -> Op:
    f = _Fields(path, line, obj)
    op = Op(
        start=f.number("start"),
        end=f.number("end"),
        kind=f.string("kind"),
        method=f.string("method"),
        name=f.string("name"),
        status=f.opt_integer("status"),
        outcome=f.string("outcome", choices=OUTCOMES),
        server=f.string("server", ""),
        db=f.string("db", ""),
        text=f.string("text", ""),
        note_id=f.opt_integer("note_id"),
        error=f.string("error", ""),
        seen=f.texts("seen"),
    )
    if not op.kind:
        raise DrillFileError(path, line, "'kind' is empty")
    if op.end < op.start:
        raise DrillFileError(path, line, f"'end' ({op.end}) is before 'start' ({op.start})")
    return op


def _event(path: Path, line: int, obj: Mapping[str, Any]) -> Event:
    f = _Fields(path, line, obj)
    return Event(t=f.number("t"), event=f.string("event"), detail=f.string("detail", ""))


def _sample(path: Path, line: int, obj: Mapping[str, Any]) -> Sample:
    f = _Fields(path, line, obj)
    return Sample(
        t=f.number("t"),
        node=f.string("node"),
        writable=f.opt_boolean("writable"),
        detail=f.string("detail", ""),
    )


def _final(path: Path, obj: Mapping[str, Any]) -> Final:
    f = _Fields(path, None, obj)
    primary = obj.get("primary")
    if primary is not None and not isinstance(primary, str):
        raise f.fail("primary", "a node name or null", primary)
    counts_obj = obj.get("counts") or {}
    if not isinstance(counts_obj, dict):
        raise f.fail("counts", "an object of node -> {text: count}", counts_obj)
    counts: dict[str, dict[str, int]] = {}
    for node, texts in counts_obj.items():
        if not isinstance(texts, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in texts.values()
        ):
            raise f.fail(f"counts.{node}", "an object of text -> integer count", texts)
        counts[node] = dict(texts)
    return Final(
        primary=primary or None,
        writable=f.names("writable"),
        counts=counts,
        unreachable=f.names("unreachable"),
    )


_DRILL_KEYS = {"fault", "target", "role", "duration", "users", "rate", "settle_after", "expect"}


def _drill(path: Path, obj: Mapping[str, Any]) -> DrillInfo:
    f = _Fields(path, None, obj)
    expect_obj = obj.get("expect") or {}
    if not isinstance(expect_obj, dict):
        raise f.fail("expect", "an object", expect_obj)
    e = _Fields(path, None, expect_obj)
    return DrillInfo(
        fault=f.string("fault"),
        target=f.string("target"),
        role=f.string("role", ""),
        duration=f.number("duration", 0.0),
        users=int(f.number("users", 0)),
        rate=f.number("rate", 0.0),
        settle_after=f.opt_number("settle_after"),
        expect=Expectation(
            db_fault=e.boolean("db_fault", False),
            web_fault=e.boolean("web_fault", False),
            lb_fault=e.boolean("lb_fault", False),
        ),
        extra={k: v for k, v in obj.items() if k not in _DRILL_KEYS},
    )
