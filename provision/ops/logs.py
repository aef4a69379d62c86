"""`fab logs`: read every host's logs where the monitor keeps them, filtered.

The monitor's rsyslog writes /var/log/remote/<host>.log (the logs role), one line per
message in rsyslog's file format: an RFC 3339 timestamp, the host, the tag, the message:

    2026-11-29T16:48:01.123456+00:00 web1 sshd[812] Accepted publickey for vagrant ...
    2026-11-29T16:48:02.000031+00:00 monitor sshd[77]: Accepted publickey for vagrant ...

(a sender's lines travel as RFC 5424, app name and process id: their tag has no colon).
The files are read over the deploy's SSH. --since is applied on the monitor first (awk
compares the timestamps as text, with a margin for any time zone, so old lines are not
copied), then exactly here with the other filters (--unit: the tag's program name;
--grep: a Python regex on the message). Lines print prefixed by host, oldest first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from provision import engine, monitoring
from provision.ops.common import TaskError, endpoints, load

DEFAULT_SINCE = "10m"
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
ZONE_MARGIN = dt.timedelta(hours=14)
"""The widest a local time can be ahead of UTC (UTC+14): the remote filter keeps every
line whose local timestamp could still be at or after the cutoff."""
STAMP_CHARS = 19
"""`YYYY-MM-DDTHH:MM:SS`: the part of a timestamp compared as text on the monitor."""


@dataclass(frozen=True)
class LogLine:
    host: str
    """The file the line came from (/var/log/remote/<host>.log)."""
    when: dt.datetime | None
    """The timestamp, in UTC (None when the line does not start with one)."""
    stamp: str
    tag: str
    """The syslog tag as written: `nginx[812]:`, `nginx[812]` or `ulogd`."""
    message: str

    @property
    def program(self) -> str:
        """The program name: the tag before `[pid]` and the colon (`nginx`)."""
        return program_of(self.tag)

    def show(self, width: int = 0) -> str:
        tag = f"{self.tag} " if self.tag else ""
        return f"{self.host:<{width}}  {self.stamp} {tag}{self.message}".rstrip()


def program_of(tag: str) -> str:
    return re.split(r"[\[:]", tag, maxsplit=1)[0]


def parse_since(text: str, now: dt.datetime) -> dt.datetime | None:
    """--since: `30s`, `10m`, `2h`, `1d` before `now`; an RFC 3339 time (UTC when it names no
    zone); `all` (or an empty string) for no limit. ValueError on anything else."""
    text = text.strip()
    if text.lower() in ("", "all"):
        return None
    match = re.fullmatch(r"(\d+)\s*([smhd])", text.lower())
    if match:
        return now - dt.timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a duration (30s, 10m, 2h, 1d), a time "
            "(2026-11-29T16:00:00Z) or all"
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def parse_timestamp(stamp: str) -> dt.datetime | None:
    """An RFC 3339 timestamp (`...T16:48:01.123456+00:00` or `...Z`) in UTC, else None."""
    if len(stamp) < STAMP_CHARS or stamp[4:5] != "-" or stamp[10:11] != "T":
        return None
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def parse_line(host: str, text: str) -> LogLine:
    """One line of a host's file: `<timestamp> <hostname> <tag> <message>`. A line that does
    not start with a timestamp is kept whole as its message."""
    stamp, _, rest = text.partition(" ")
    when = parse_timestamp(stamp)
    if when is None:
        return LogLine(host, None, "", "", text)
    _hostname, _, rest = rest.partition(" ")
    # rsyslog writes the tag, then the message after exactly one space; a message with no
    # tag leaves it empty (two spaces).
    tag, _, message = rest.partition(" ")
    return LogLine(host, when, stamp, tag, message)


def matches(
    line: LogLine,
    since: dt.datetime | None = None,
    unit: str = "",
    pattern: re.Pattern[str] | None = None,
) -> bool:
    """Whether a line passes --since (at or after), --unit (the program name; a trailing
    `.service` is ignored) and --grep (searched in the message)."""
    if since is not None and (line.when is None or line.when < since):
        return False
    if unit and line.program != unit.removesuffix(".service"):
        return False
    return pattern is None or pattern.search(line.message) is not None


def remote_prefix(since: dt.datetime | None) -> str:
    """What the monitor's awk compares each line's first STAMP_CHARS characters with: the
    cutoff less ZONE_MARGIN, so no line at or after the cutoff is left behind ("" keeps all)."""
    if since is None:
        return ""
    return (since - ZONE_MARGIN).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def remote_command(files: Iterable[str], since: dt.datetime | None) -> str:
    """The command run on the monitor: each file's lines from the cutoff on, as
    `<host>\\t<line>` (host: the file's name without `.log`)."""
    names = " ".join(shlex.quote(f) for f in files)
    program = (
        f"substr($0, 1, {STAMP_CHARS}) >= since "
        '{ n = FILENAME; sub(/^.*\\//, "", n); sub(/\\.log$/, "", n); print n "\\t" $0 }'
    )
    return (
        f"LC_ALL=C awk -v since={shlex.quote(remote_prefix(since))} {shlex.quote(program)} {names}"
    )


def parse_output(text: str) -> list[LogLine]:
    """The remote command's output -> lines, oldest first (the hosts' files merged)."""
    found = []
    for raw in text.splitlines():
        host, sep, line = raw.partition("\t")
        if sep:
            found.append(parse_line(host, line))
    oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(found, key=lambda line: line.when or oldest)  # stable: a file's order kept


def logs(
    topology_name: str | None,
    inventory_file: str | None,
    host: str = "",
    unit: str = "",
    since: str = DEFAULT_SINCE,
    grep: str = "",
    out: Callable[[str], None] = print,
) -> int:
    """Print the matching lines of the monitor's /var/log/remote; how many were printed.
    TaskError (naming the host and the step) when the logs cannot be read."""
    topo = load(topology_name)
    mon = monitoring.monitor_host(topo)
    if mon is None:
        raise TaskError(f"topology {topo.name!r} has no monitor: no host keeps the logs")
    known = [h.name for h in monitoring.reporting_hosts(topo)]
    if host and host not in known:
        why = (
            "it shares no network with the monitor and ships no logs"
            if host in topo.hosts
            else "no such host in the topology"
        )
        raise TaskError(f"--host {host}: {why} (hosts with logs: {', '.join(known)})")
    try:
        cutoff = parse_since(since, dt.datetime.now(dt.UTC))
    except ValueError as exc:
        raise TaskError(str(exc)) from None
    try:
        pattern = re.compile(grep) if grep else None
    except re.error as exc:
        raise TaskError(f"--grep {grep!r}: not a valid regular expression: {exc}") from None
    eps = endpoints(topo, inventory_file)
    log_dir = monitoring.LOG_DIR
    with contextlib.ExitStack() as stack:
        try:
            remote = stack.enter_context(engine.Remote(mon, eps[mon.name]))
        except Exception as exc:
            raise TaskError(
                f"{mon.name}: cannot connect over SSH to read {log_dir}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        try:
            listed = remote.run(f"ls -1 {log_dir}", check=False)
            if not listed.ok:
                raise TaskError(
                    f"{mon.name}: no {log_dir} ({listed.stderr.strip() or listed.stdout.strip()})"
                    ": is the logs role deployed? (fab deploy)"
                )
            present = {n.strip() for n in listed.stdout.splitlines() if n.strip().endswith(".log")}
            wanted = [f"{host}.log"] if host else sorted(present)
            missing = [f for f in wanted if f not in present]
            if missing:
                raise TaskError(
                    f"{mon.name}: no {log_dir}/{missing[0]} yet: nothing received from {host} "
                    f"(is rsyslog running there? `fab logs --host {mon.name} --unit rsyslogd` "
                    "shows the monitor's side)"
                )
            if not wanted:
                raise TaskError(
                    f"{mon.name}: no {log_dir}/*.log yet: nothing received (is the logs role "
                    "deployed? fab deploy)"
                )
            data = remote.output_bytes(
                remote_command((f"{log_dir}/{name}" for name in wanted), cutoff)
            )
        except engine.StepError as exc:
            raise TaskError(f"{mon.name}: reading {log_dir}: {exc}") from None
    lines = [
        line
        for line in parse_output(data.decode("utf-8", errors="replace"))
        if matches(line, cutoff, unit, pattern)
    ]
    width = max((len(line.host) for line in lines), default=0)
    for line in lines:
        out(line.show(width))
    return len(lines)
