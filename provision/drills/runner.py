"""`fab drill`: one fault drill, from preflight to verdict.

    preflight   every host answers SSH; the database cluster is healthy (exactly one
                writable node, every other one replicating with IO/SQL Yes); the fault can
                run here (e.g. tc netem for delay)
    sampler     every 0.5 s, each db node's @@read_only and SHOW SLAVE STATUS over a
                persistent SSH connection (`timeout 1 mariadb`: a paused server reads as
                "no answer", it never stalls the sampler) -> samples.jsonl
    workload    Locust, headless, fixed rate, qps.py's personas -> history.jsonl (+ CSV/HTML)
    warm-up     --warmup s of load before the fault
    fault       fault-start, inject, hold --duration s, heal, fault-end (heal always runs:
                in a `finally`, with Ctrl-C deferred while it runs)
    settle      until exactly one node is writable for 3 s in a row (at most 60 s):
                settle_after = the start of that run; then --settle s more load
    collect     load stopped; final.json (counts of the drill's notes on each node, who is
                writable, the primary), the failover controller's log into events.jsonl,
                drill.json
    check       history.load -> checker.check -> report.write_report; prints the verdict

Everything lands in .testbed/drills/<UTC yyyymmddThhmmssZ>-<fault>-<host>/. Errors that
stop a drill (DrillError) name the host and the step; the fab task exits 2 on them.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from provision import STATE_DIR, dbcluster, secrets
from provision.dbcluster import NodeState
from provision.drills import nemesis
from provision.drills.nemesis import DrillError, Machines, Target
from provision.drills.workload import Workload, WorkloadError
from provision.engine import Remote
from provision.inventory import Endpoint, InventoryError, site_entry
from provision.ops.common import TaskError, endpoints, load
from provision.topology import Topology

DRILLS_DIR = STATE_DIR / "drills"
SAMPLE_INTERVAL = 0.5
SETTLE_HOLD = 3.0
"""Seconds in a row with exactly one writable node that count as settled."""
SETTLE_MAX = 60.0
"""Longest wait for that after the heal; the drill goes on (settle_after null) after it."""
SAMPLE_SQL = r"SELECT @@read_only AS read_only\G SHOW SLAVE STATUS\G"
# `timeout 1` on the machine: a paused (SIGSTOPped) mariadbd accepts the connection and
# never answers; the client must give up on its own for the sampler to keep its pace.
SAMPLE_COMMAND = f"timeout 1 mariadb --connect-timeout=1 -e {shlex.quote(SAMPLE_SQL)}"
SAMPLE_SSH_TIMEOUT = 3
"""Seconds for one sample's SSH round trip, connection included, before it reads as null."""
SAMPLE_MAX_BACKOFF = 4.0
"""Longest pause between samples of a node whose MariaDB keeps timing out. A sample that
times out leaves its query blocked inside a hung server, holding a connection: at one
every 0.5 s, the observer alone would use up the server's 151 within 75 s (the split drill
saw it), turning a hang the system could recover from into one it cannot."""


# --------------------------------------------------------------------------- pure parts


TIMED_OUT = 124
"""timeout(1)'s exit code: the server took the connection and did not answer in time."""


def sample_pause(timeouts: int) -> float:
    """Seconds to the next sample after `timeouts` timed-out samples in a row: the usual
    pace, then doubling up to SAMPLE_MAX_BACKOFF while the server stays hung."""
    if timeouts <= 1:
        return SAMPLE_INTERVAL
    return float(min(SAMPLE_INTERVAL * 2 ** (timeouts - 1), SAMPLE_MAX_BACKOFF))


def parse_sample(rc: int, output: str) -> tuple[bool | None, str, str]:
    """(writable, detail, replication) from SAMPLE_COMMAND's exit code and output.

    detail: primary (writable), replica (read-only, replicating), fenced (read-only,
    replicating from no one) or "no answer"; replication: "IO/SQL" (e.g. "Yes/Yes") or "".
    """
    fields = {
        k.strip(): v.strip()
        for k, _, v in (line.partition(":") for line in output.splitlines())
        if _ and k.strip()
    }
    if rc != 0 or fields.get("read_only") not in ("0", "1"):
        return None, "no answer", ""
    repl = ""
    if fields.get("Master_Host"):
        repl = f"{fields.get('Slave_IO_Running', '?')}/{fields.get('Slave_SQL_Running', '?')}"
    if fields["read_only"] == "0":
        return True, "primary", repl
    return False, ("replica" if repl else "fenced"), repl


def settled_since(
    samples: Sequence[Mapping[str, Any]], nodes: Sequence[str], since: float, hold: float
) -> float | None:
    """The start of the first run of >= `hold` s after `since` in which exactly one node
    (the same one throughout) was writable, judging each node by its latest sample; None
    if there is no such run yet. Every node must have been sampled since `since`."""
    latest: dict[str, bool | None] = {}
    run_start: float | None = None
    run_node = ""
    for s in sorted((s for s in samples if s["t"] >= since), key=lambda s: s["t"]):
        latest[s["node"]] = s["writable"]
        if not set(nodes) <= latest.keys():
            continue
        writable = [n for n in nodes if latest[n] is True]
        if len(writable) != 1:
            run_start, run_node = None, ""
        elif run_start is None or writable[0] != run_node:
            run_start, run_node = s["t"], writable[0]
        elif s["t"] - run_start >= hold:
            return run_start
    return None


def cluster_problem(states: Mapping[str, NodeState]) -> str | None:
    """Why the database cluster is not fit for a drill (and the command that fixes it)."""
    for s in states.values():
        if not s.reachable:
            return (
                f"{s.name}: MariaDB does not answer ({s.error[:200]}); start it "
                f"(`vagrant ssh {s.name} -c 'sudo systemctl start mariadb'`), then `fab db.status`"
            )
    writable = [s.name for s in states.values() if not s.read_only]
    if len(writable) > 1:
        return (
            f"split brain: {', '.join(writable)} all accept writes; settle it by hand "
            "(docs/database.md) before any drill"
        )
    if not writable:
        roles = ", ".join(f"{s.name} {s.role}" for s in states.values())
        return f"no database node accepts writes ({roles}): promote one with `fab db.failover`"
    for s in states.values():
        if s.name == writable[0]:
            if s.replicating_from:
                return (
                    f"{s.name} is writable yet replicates from {s.replicating_from}: "
                    "fix by hand (docs/database.md)"
                )
            continue
        if not s.replicating_from:
            return (
                f"{s.name} is fenced (read-only, replicating from no one): "
                f"rejoin it with `fab db.rejoin --host {s.name}`"
            )
        if s.io_running != "Yes" or s.sql_running != "Yes":
            why = f": {s.last_error[:160]}" if s.last_error else ""
            return (
                f"{s.name} replicates with IO/SQL {s.io_running or '-'}/{s.sql_running or '-'}"
                f"{why}; rebuild it with `fab db.rejoin --host {s.name}`"
            )
    return None


def folder_name(when: datetime, fault: str, host: str) -> str:
    return f"{when.astimezone(UTC):%Y%m%dT%H%M%SZ}-{fault}-{host}"


def dbwatch_events(journal_json_lines: str, limit: int = 200) -> list[dict[str, Any]]:
    """events.jsonl entries from `journalctl -u dbwatch -o json`: each JSON MESSAGE by its
    "event" field; anything else the unit logged (systemd's start/stop, a traceback) as
    "dbwatch-log", so that a crashing controller shows in the drill's record."""
    found: list[dict[str, Any]] = []
    for line in journal_json_lines.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald's form for a non-UTF-8 message
            message = bytes(message).decode("utf-8", "replace")
        try:
            t = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        except (KeyError, ValueError):
            continue
        event = "dbwatch-log"
        with contextlib.suppress(ValueError, TypeError):
            parsed = json.loads(message)
            if isinstance(parsed, dict) and isinstance(parsed.get("event"), str):
                event = parsed["event"]
        found.append({"t": t, "event": event, "detail": str(message)[:1000], "source": "dbwatch"})
    return found[-limit:]


# --------------------------------------------------------------------------- recording


class JsonLines:
    """An append-only .jsonl file, one flushed line per record; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)
            self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._fh.flush()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)

    def close(self) -> None:
        with self._lock:
            self._fh.close()


@dataclass
class Progress:
    started: float = field(default_factory=time.monotonic)

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {message}", flush=True)


class Sampler:
    """One thread per db node, each with its own SSH connection, sampling every 0.5 s."""

    def __init__(
        self, topo: Topology, eps: Mapping[str, Endpoint], nodes: Sequence[str], path: Path
    ) -> None:
        self.topo, self.eps, self.nodes = topo, eps, list(nodes)
        self.out = JsonLines(path)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(n,), name=f"sampler-{n}", daemon=True)
            for n in self.nodes
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=SAMPLE_SSH_TIMEOUT + 5)
        self.out.close()

    def snapshot(self) -> list[dict[str, Any]]:
        return self.out.snapshot()

    def _connect(self, name: str) -> Remote:
        remote = Remote(self.topo.hosts[name], self.eps[name])
        # Short: a stopped or booting machine must read as "no answer" within the sampling
        # pace, not hold the thread for the engine's 10-20 s connection timeouts.
        remote.conn.connect_timeout = SAMPLE_SSH_TIMEOUT
        remote.conn.connect_kwargs.update(
            banner_timeout=SAMPLE_SSH_TIMEOUT, auth_timeout=SAMPLE_SSH_TIMEOUT
        )
        remote.connect()
        return remote

    def _loop(self, name: str) -> None:
        ep = self.eps[name]
        command = (
            SAMPLE_COMMAND
            if ep.user == "root"
            else f"sudo -n -- sh -c {shlex.quote(SAMPLE_COMMAND)}"
        )
        remote: Remote | None = None
        due = time.monotonic()
        timeouts = 0
        while not self._stop.is_set():
            t = time.time()
            writable, detail, repl, error = None, "no answer", "", ""
            try:
                if remote is None:
                    remote = self._connect(name)
                res = remote.conn.run(
                    command, hide=True, warn=True, in_stream=False, timeout=SAMPLE_SSH_TIMEOUT
                )
                writable, detail, repl = parse_sample(res.exited, res.stdout)
                timeouts = timeouts + 1 if res.exited == TIMED_OUT else 0
            except Exception as exc:  # SSH gone (machine stopped): reconnect next round
                error = f"{type(exc).__name__}: {exc}"[:200]
                if remote is not None:
                    with contextlib.suppress(Exception):
                        remote.close()
                remote = None
            record: dict[str, Any] = {
                "t": round(t, 3),
                "node": name,
                "writable": writable,
                "detail": detail,
            }
            if repl:
                record["io_sql"] = repl
            if error:
                record["error"] = error
            self.out.append(record)
            due += sample_pause(timeouts)
            wait = due - time.monotonic()
            if wait < 0:  # fell behind (a slow answer): keep the pace from now on
                due, wait = time.monotonic(), 0.0
            self._stop.wait(wait)
        if remote is not None:
            with contextlib.suppress(Exception):
                remote.close()


@contextlib.contextmanager
def deferred_interrupt(say: Progress) -> Iterator[None]:
    """Ctrl-C waits until the block (the heal) is done, then takes effect."""
    caught: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)
        say("Ctrl-C: healing first, then stopping")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- the drill


@dataclass
class Drill:
    """State of one run, so that every phase can record into the same place."""

    fault: str
    topo: Topology
    eps: dict[str, Endpoint]
    machines: Machines
    target: Target
    peers: list[str]
    folder: Path
    say: Progress
    info: dict[str, Any]
    phases: dict[str, float] = field(default_factory=dict)
    events: JsonLines | None = None
    nemesis: nemesis.Fault | None = None
    inventory: str | None = None

    def emit(self, event: str, detail: str = "") -> None:
        assert self.events is not None
        self.events.append({"t": round(time.time(), 3), "event": event, "detail": detail})
        self.say(f"{event}: {detail}" if detail else event)

    def write_info(self) -> None:
        self.info["phases"] = {k: round(v, 2) for k, v in self.phases.items()}
        path = self.folder / "drill.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(path)


def run(
    fault: str,
    target: str,
    *,
    duration: float = 8.0,
    users: int = 10,
    rate: float = 2.0,
    peers: str = "",
    loss: float = nemesis.DEFAULT_LOSS,
    warmup: float = 8.0,
    settle: float = 10.0,
    topology: str = "",
    inventory: str = "",
    side: str = "",
) -> bool:
    """Run one drill; True when the checker passes it. DrillError when it could not run."""
    say = Progress()
    nemesis.validate(
        fault,
        duration=duration,
        users=users,
        rate=rate,
        loss=loss,
        warmup=warmup,
        settle=settle,
        peers=peers,
        side=side,
    )
    if not target:
        raise DrillError("give --target: a host name or a role (db-primary, db-replica, web, lb)")
    say("preflight: topology and how to reach each machine (vagrant ssh-config)")
    try:
        topo = load(topology)
        eps = endpoints(topo, inventory)
    except TaskError as exc:
        raise DrillError(f"preflight: {exc}") from None
    machines = Machines(topo, eps, say)
    try:
        try:
            drill = _preflight(
                fault, target, peers, loss, topo, eps, machines, say, topology, inventory, side
            )
        except DrillError as exc:
            text = str(exc)
            raise DrillError(
                text if text.startswith("preflight") else f"preflight: {text}"
            ) from None
        drill.info.update(duration=duration, users=users, rate=rate, warmup=warmup, settle=settle)
        return _execute(drill, duration, users, rate, warmup, settle)
    finally:
        machines.close()


def _preflight(
    fault: str,
    target_spec: str,
    peers_spec: str,
    loss: float,
    topo: Topology,
    eps: dict[str, Endpoint],
    machines: Machines,
    say: Progress,
    topology_arg: str,
    inventory: str,
    side_spec: str = "",
) -> Drill:
    say(f"preflight: SSH to every host of topology {topo.name!r}")
    with ThreadPoolExecutor(max_workers=len(topo.hosts)) as pool:
        errors = [e for e in pool.map(lambda h: _try_connect(machines, h), topo.hosts) if e]
    if errors:
        raise DrillError("preflight: " + "; ".join(errors))
    primary: str | None = None
    replicas: list[str] = []
    problem: str | None = None
    if topo.in_tier("db"):
        states = dbcluster.states(topo, eps)
        problem = cluster_problem(states)
        writable = [s.name for s in states.values() if s.reachable and not s.read_only]
        primary = writable[0] if len(writable) == 1 else None
        replicas = [s.name for s in states.values() if s.reachable and s.replicating_from]
    try:
        target = nemesis.resolve_target(topo, target_spec, fault, primary, replicas)
    except DrillError as exc:
        # "No primary right now" has a cause worth more than the symptom.
        raise DrillError(
            f"preflight: database cluster: {problem}" if problem else str(exc)
        ) from None
    peers: list[str] = []
    side: list[str] = []
    if fault in nemesis.NETWORK_FAULTS:
        if side_spec:
            side = nemesis.parse_peers(topo, side_spec, target, primary, replicas)
        peers = (
            nemesis.parse_peers(topo, peers_spec, target, primary, replicas)
            if peers_spec
            else nemesis.default_peers(topo, target)
        )
        both = sorted(set(side) & set(peers))
        if both and peers_spec:
            raise DrillError(f"--side and --peers both name {', '.join(both)}")
        peers = [p for p in peers if p not in side]
        if not peers:
            raise DrillError("no peer left to cut once --side is taken out of the peers")
    say(
        f"preflight: target {target.host} as {target.role}"
        + (f" (asked: {target.asked})" if target.asked != target.host else "")
        + (f", with {', '.join(side)} on its side" if side else "")
        + (f", peers {', '.join(peers)}" if peers else "")
    )
    ca = secrets.site_ca_cert_path()
    if not ca.is_file():
        raise DrillError(f"preflight: no site CA at {ca}: run `fab deploy` first")
    now = datetime.now(UTC)
    folder = DRILLS_DIR / folder_name(now, fault, target.host)
    info: dict[str, Any] = {
        "fault": fault,
        "target": target.host,
        "role": target.role,
        "asked": target.asked,
        "target_roles": list(topo.hosts[target.host].roles),
        "topology": topo.name,
        "settle_after": None,
        "expect": nemesis.expectations(topo, fault, target, peers, side),
        "peers": peers,
        "side": side,
        "deploy_exit": None,
        "primary_before": primary,
        "started": now.isoformat(timespec="seconds"),
    }
    if fault == "loss":
        info["loss"] = loss
    drill = Drill(fault, topo, eps, machines, target, peers, folder, say, info)
    drill.inventory = inventory or None
    drill.nemesis = nemesis.make(
        fault,
        machines,
        target,
        peers,
        loss=loss,
        emit=drill.emit,
        folder=folder,
        topology_arg=topology_arg,
        inventory=inventory,
        side=side,
    )
    # Whether the fault can run here at all comes first: "no netem on this kernel" is
    # the answer to a delay drill whatever state the database is in.
    say(f"preflight: can {fault} run on {target.host}?")
    drill.nemesis.preflight()
    if topo.in_tier("db"):
        say("preflight: database cluster (one writable node, the others replicating)")
        if problem:
            raise DrillError(f"preflight: database cluster: {problem}")
        say(f"preflight: primary {primary}, replicas {', '.join(replicas) or 'none'}")
    drill.phases["preflight_s"] = time.monotonic() - say.started
    return drill


def _try_connect(machines: Machines, name: str) -> str:
    try:
        machines.get(name)
    except DrillError as exc:
        return f"{exc}; is it up? (`vagrant up {name}`, `fab status`)"
    return ""


def _execute(
    drill: Drill, duration: float, users: int, rate: float, warmup: float, settle: float
) -> bool:
    say, topo, fault = drill.say, drill.topo, drill.nemesis
    assert fault is not None
    drill.folder.mkdir(parents=True, exist_ok=False)
    say(f"drill folder: {_shown(drill.folder)}")
    drill.events = JsonLines(drill.folder / "events.jsonl")
    try:
        site = site_entry(topo, drill.inventory or None).url()
    except InventoryError as exc:
        raise DrillError(f"preflight: {exc}") from None
    run_time = warmup + duration + SETTLE_MAX + settle + 120
    run_time += {"stop": 1200, "deploy": 1800}.get(drill.fault, 0)
    workload = Workload(drill.folder, site, users, rate, int(run_time), secrets.site_ca_cert_path())
    drill.info["prefix"] = workload.prefix
    drill.info["site"] = site
    drill.write_info()
    db_nodes = [h.name for h in topo.in_tier("db")]
    sampler = Sampler(topo, drill.eps, db_nodes, drill.folder / "samples.jsonl")
    phase = "warm-up"
    injected = healed = False
    heal_error = ""
    fault_end = 0.0
    try:
        sampler.start()
        drill.emit(
            "warmup-start",
            f"{users} users x {rate:g} req/s = {users * rate:g} req/s on "
            f"{site}, notes {workload.prefix} ...; {warmup:g} s",
        )
        t0 = time.monotonic()
        try:
            workload.start()
        except WorkloadError as exc:
            raise DrillError(f"workload (start Locust): {exc}") from None
        _hold(warmup - (time.monotonic() - t0), workload)
        drill.phases["warmup_s"] = time.monotonic() - t0
        recorded = workload.requests_recorded()
        if recorded == 0:
            raise DrillError(
                f"workload: no request recorded in {warmup:g} s of warm-up; "
                f"see {_shown(workload.log_path)}: {workload.log_tail()}"
            )
        say(f"warm-up done: {recorded} requests recorded")
        try:
            phase = "fault"
            drill.emit(
                "fault-start",
                f"{drill.fault} on {drill.target.host} "
                f"({drill.target.role})"
                + (f" from {', '.join(drill.peers)}" if drill.peers else ""),
            )
            injected = True  # from here on, heal: an inject may fail halfway
            t0 = time.monotonic()
            detail = fault.inject()
            drill.phases["inject_s"] = time.monotonic() - t0
            drill.emit("injected", f"{detail} ({drill.phases['inject_s']:.1f} s)")
            applied = fault.applied_at if fault.applied_at is not None else t0
            _hold(duration - (time.monotonic() - applied), workload)
            drill.phases["fault_held_s"] = time.monotonic() - applied
        finally:
            if injected:
                with deferred_interrupt(say):
                    t0 = time.monotonic()
                    say(f"healing {drill.fault} on {drill.target.host}")
                    try:
                        detail = fault.heal()
                        healed = True
                    except Exception as exc:
                        heal_error = f"{exc}"
                        detail = f"HEAL FAILED: {exc}; fix by hand: {fault.heal_hint()}"
                    drill.phases["heal_s"] = time.monotonic() - t0
                    fault_end = time.time()
                    drill.emit("fault-end", f"{detail} ({drill.phases['heal_s']:.1f} s)")
        if drill.fault == "deploy":
            drill.info["deploy_exit"] = getattr(fault, "exit_code", None)
            drill.info["recovery_deploy_exit"] = getattr(fault, "recovery_exit", None)
        if drill.fault == "stop":
            drill.info["stop_timings_s"] = {
                k: round(v, 1) for k, v in getattr(fault, "timings", {}).items()
            }
        phase = "settle"
        t0 = time.monotonic()
        settle_after = _wait_settled(drill, sampler, db_nodes, fault_end) if db_nodes else fault_end
        drill.info["settle_after"] = settle_after
        drill.phases["settle_wait_s"] = time.monotonic() - t0
        say(f"keeping the load {settle:g} s more")
        t0 = time.monotonic()
        _hold(settle, workload)
        drill.phases["settle_s"] = time.monotonic() - t0
        phase = "load-stop"
    except (KeyboardInterrupt, DrillError) as exc:
        what = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else str(exc)
        healing = ""
        if injected:
            healing = "; the fault was healed" if healed else f"; HEAL FAILED: {heal_error}"
        raise DrillError(
            f"{what} (during {phase}){healing}; partial record in {_shown(drill.folder)}"
        ) from None
    finally:
        t0 = time.monotonic()
        drill.emit("load-stop", "SIGINT to Locust; waiting for in-flight requests and reports")
        code = workload.stop()
        drill.phases["load_stop_s"] = time.monotonic() - t0
        sampler.stop()
        drill.info["locust_exit"] = code
        drill.info["locust_reports"] = workload.reports()
        drill.write_info()
    if heal_error:
        say(f"HEAL FAILED: {heal_error}\n  fix by hand: {fault.heal_hint()}")

    t0 = time.monotonic()
    say("collecting the final database state")
    final = collect_final(drill, workload.prefix)
    (drill.folder / "final.json").write_text(json.dumps(final, indent=2, ensure_ascii=False) + "\n")
    say(
        f"final: primary {final['primary'] or 'none'}, writable {final['writable'] or 'none'}"
        + (f", unreachable {final['unreachable']}" if final["unreachable"] else "")
    )
    _copy_dbwatch_log(drill)
    drill.phases["collect_s"] = time.monotonic() - t0
    drill.write_info()
    say("workload: " + _history_line(workload.history))

    t0 = time.monotonic()
    passed = _check(drill.folder)
    drill.phases["check_s"] = time.monotonic() - t0
    drill.write_info()
    say("phases: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in drill.phases.items()))
    print(f"Drill folder: {_shown(drill.folder)}", flush=True)
    if heal_error:
        raise DrillError(
            f"heal failed on {drill.target.host}: {heal_error}; fix by hand: "
            f"{fault.heal_hint()} (the record is in {_shown(drill.folder)})"
        )
    return passed


def _hold(seconds: float, workload: Workload) -> None:
    """Sleep while the load runs; a Locust that died ends the drill (no load, no drill)."""
    deadline = time.monotonic() + max(seconds, 0.0)
    while time.monotonic() < deadline:
        if not workload.running():
            code = workload.proc.returncode if workload.proc else None
            raise DrillError(f"workload: Locust exited early (code {code}): {workload.log_tail()}")
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))


def _wait_settled(drill: Drill, sampler: Sampler, nodes: list[str], since: float) -> float | None:
    drill.say(
        f"settling: waiting for exactly one writable node for {SETTLE_HOLD:g} s "
        f"(at most {SETTLE_MAX:g} s)"
    )
    deadline = time.monotonic() + SETTLE_MAX
    while time.monotonic() < deadline:
        found = settled_since(sampler.snapshot(), nodes, since, SETTLE_HOLD)
        if found is not None:
            latest = {s["node"]: s for s in sampler.snapshot()}
            writer = next((n for n in nodes if latest.get(n, {}).get("writable") is True), "?")
            drill.emit(
                "settled",
                f"{writer} the only writable node since {found - since:+.1f} s after fault-end",
            )
            return found
        time.sleep(0.25)
    latest = {s["node"]: s for s in sampler.snapshot()}
    shown = ", ".join(f"{n} {latest.get(n, {}).get('detail', '?')}" for n in nodes)
    drill.emit(
        "not-settled",
        f"no single writable node for {SETTLE_HOLD:g} s within "
        f"{SETTLE_MAX:g} s of the heal ({shown})",
    )
    return None


def collect_final(drill: Drill, prefix: str) -> dict[str, Any]:
    """final.json: per reachable db node the counts of this drill's notes, who is writable."""
    topo = drill.topo
    states = dbcluster.states(topo, drill.eps)
    sql = f"SELECT text, COUNT(*) FROM testbed.notes WHERE text LIKE '{prefix} %' GROUP BY text"
    counts: dict[str, dict[str, int]] = {}
    unreachable: list[str] = []
    errors: dict[str, str] = {}
    for name, state in states.items():
        if not state.reachable:
            unreachable.append(name)
            errors[name] = state.error[:300]
            continue
        try:
            raw = drill.machines.get(name).output_bytes(f"mariadb -N -B -e {shlex.quote(sql)}")
        except Exception as exc:
            drill.machines.forget(name)
            unreachable.append(name)
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        counts[name] = {}
        for line in raw.decode("utf-8").splitlines():
            text, _, n = line.rpartition("\t")
            if text:
                counts[name][text] = int(n)
    writable = sorted(n for n, s in states.items() if s.reachable and not s.read_only)
    primaries = [n for n in writable if not states[n].replicating_from]
    final: dict[str, Any] = {
        "primary": primaries[0] if len(primaries) == 1 else None,
        "writable": writable,
        "counts": counts,
        "unreachable": sorted(unreachable),
        "roles": {n: s.role for n, s in states.items()},
    }
    if errors:
        final["errors"] = errors
    return final


def _copy_dbwatch_log(drill: Drill) -> None:
    """The failover controller's own timeline for the drill window, into events.jsonl."""
    assert drill.events is not None
    since = int(min((e["t"] for e in drill.events.snapshot()), default=time.time())) - 1
    found: list[dict[str, Any]] = []
    for host in drill.topo.with_role("monitor"):
        try:
            rc, out = drill.machines.run(
                host.name,
                "collect (dbwatch log)",
                f"journalctl -u dbwatch -o json --since @{since} --no-pager 2>/dev/null",
                check=False,
            )
        except DrillError as exc:  # the record matters more than the controller's log
            drill.say(f"dbwatch log not copied: {exc}")
            continue
        found += dbwatch_events(out) if rc == 0 else []
    drill.events.close()
    events = [json.loads(line) for line in drill.events.path.read_text().splitlines() if line]
    merged = sorted(events + found, key=lambda e: e["t"])
    drill.events.path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in merged))
    if found:
        drill.say(f"dbwatch: {len(found)} log entries copied into events.jsonl")
    else:
        drill.say("dbwatch: nothing logged in the drill window (or automatic failover is off)")


def _history_line(path: Path) -> str:
    ops = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    by: dict[str, int] = {}
    for op in ops:
        by[op["outcome"]] = by.get(op["outcome"], 0) + 1
    writes = [op for op in ops if op["kind"] == "write"]
    acked = sum(op["outcome"] == "ok" for op in writes)
    return (
        f"{len(ops)} requests ({', '.join(f'{k} {v}' for k, v in sorted(by.items()))}); "
        f"{len(writes)} writes, {acked} acknowledged"
    )


def _check(folder: Path) -> bool:
    from provision.drills import checker, history, report

    try:
        h = history.load(folder)
    except history.DrillFileError as exc:
        raise DrillError(f"check: {exc}") from None
    verdict = checker.check(h)
    report.write_report(folder, h, verdict)
    print(report.render_summary_text(verdict), flush=True)
    return verdict.ok


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)
