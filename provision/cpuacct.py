"""CPU time per machine and per program while a measurement runs (docker provider).

The docker provider's machines are containers, so their processes are this host's: the
user and system CPU time of each (`/proc/<pid>/stat`), read before and after a run and
grouped by the machine (the container its cgroup names) and the program, says where the
run's CPU went. `python -m bench.edge --cpu` prints it per route and side, per 1,000
requests. With VirtualBox the machines' processes are not visible here: the reading is
empty and the bench says so.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CONTAINER = re.compile(r"docker[-/]([0-9a-f]{64})")
Key = tuple[str, str]
"""(machine, program)."""


def parse_stat(text: str) -> tuple[str, int]:
    """(program, user + system clock ticks) from one /proc/<pid>/stat line. The program
    name sits in parentheses and may hold spaces and parentheses itself."""
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # After the name: state is field 3 of stat(5); utime and stime are fields 14 and 15.
    return comm, int(fields[11]) + int(fields[12])


def container_of(cgroup: str) -> str | None:
    """The container id a /proc/<pid>/cgroup text names (cgroup v1 or v2), else None."""
    found = CONTAINER.search(cgroup)
    return found.group(1) if found else None


def machine_of(container_name: str, topology_name: str, project: str) -> str | None:
    """The machine's name from its container's (testbed-<topology>-<machine>-<project>,
    provision/vagrant.py), or None for another checkout's or topology's container."""
    prefix, suffix = f"testbed-{topology_name}-", f"-{project}"
    if container_name.startswith(prefix) and container_name.endswith(suffix):
        return container_name[len(prefix) : -len(suffix)] or None
    return None


Snapshot = dict[str, tuple[Key, int]]


def snapshot(names: dict[str, str], proc: Path = Path("/proc")) -> Snapshot:
    """pid -> ((machine, program), ticks) for every process of a known container."""
    out: Snapshot = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cgroup = (entry / "cgroup").read_text()
        except OSError:
            continue  # gone meanwhile
        container = container_of(cgroup)
        if container in names:
            comm, ticks = parse_stat(stat)
            out[entry.name] = ((names[container], comm), ticks)
    return out


def difference(before: Snapshot, after: Snapshot, hz: int) -> dict[Key, float]:
    """CPU seconds per (machine, program) between two snapshots; a process that started
    in between counts from zero, one that ended in between is lost (short-lived)."""
    used: dict[Key, float] = collections.defaultdict(float)
    for pid, (key, ticks) in after.items():
        was = before.get(pid)
        start = was[1] if was and was[0] == key else 0
        used[key] += (ticks - start) / hz
    return dict(used)


def containers(topology_name: str, project: str) -> dict[str, str]:
    """container id -> machine name, for this checkout's running machines of the topology
    (empty when docker cannot be asked)."""
    try:
        out = subprocess.run(
            ["docker", "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"],
            capture_output=True, text=True, check=False, timeout=20,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.splitlines():
        cid, _, name = line.partition(" ")
        machine = machine_of(name, topology_name, project)
        if machine:
            found[cid] = machine
    return found


@contextmanager
def measured(topology_name: str, project: str) -> Iterator[Callable[[], dict[Key, float]]]:
    """with measured("seed", project) as used: ...run...; used() -> CPU seconds per key."""
    names = containers(topology_name, project)
    before = snapshot(names)
    result: dict[Key, float] = {}
    yield lambda: result
    result.update(difference(before, snapshot(names), os.sysconf("SC_CLK_TCK")))


def table(used: dict[Key, float], requests: int, top: int = 12) -> str:
    """The heaviest programs, CPU seconds per 1,000 requests, and the total."""
    if not used:
        return (
            "(no machine's processes were seen: CPU is read on the docker provider only, "
            "as a user who may run `docker ps` and read /proc)"
        )
    per = 1000 / max(requests, 1)
    lines = ["| machine | program | CPU s per 1,000 requests |", "|---|---|---|"]
    for (machine, program), seconds in sorted(used.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {machine} | {program} | {seconds * per:.3f} |")
    lines.append(f"| all | all | {sum(used.values()) * per:.3f} |")
    return "\n".join(lines)
