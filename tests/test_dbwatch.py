"""The failover controller's decisions with three database nodes, on stubbed agents and
SQL (provision/roles/dbwatch/files/dbwatch.py runs on the monitor; its I/O is three
methods, replaced here). The real thing is proved by the drills on hardened."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests import scripts

ADDRESS = {"db1": "10.0.0.41", "db2": "10.0.0.42", "db3": "10.0.0.43"}


def load_module() -> Any:
    return scripts.load("provision/roles/dbwatch/files/dbwatch.py")


class Stub:
    """A controller whose primary db1 has stopped answering, its lease long run out."""

    def __init__(self, tmp_path: Path, states: dict[str, Any], received: dict[str, str]) -> None:
        self.m = load_module()
        self.m.STATE = str(tmp_path / "state.json")
        cfg = {
            "nodes": [{"name": n, "address": a} for n, a in ADDRESS.items()],
            "check_port": 9200, "token": "t", "client_cnf": "/dev/null",
            "lease_seconds": 0.01, "fence_margin": 0.0, "writer_check_window": 0.0,
            "confirm_seconds": 0.0, "split_brain_grace": 2.0, "interval_seconds": 0.5,
        }  # fmt: skip
        self.c = self.m.Controller(cfg)
        self.c.primary, self.c.epoch, self.c.fresh = "db1", 1, False
        self.c.last_renewal = time.monotonic() - 60
        self.states, self.received = states, received
        self.statements: list[tuple[str, str]] = []
        self.fail_on: tuple[str, str] | None = None
        self.dump_threads: dict[str, str] = {}
        self.c.get_state = lambda n: self.states.get(n)
        self.c.post = lambda n, path, **kw: (200, {}) if n != "db1" else (None, {})
        self.c.sql = self.sql

    def sql(self, node: str, statement: str, timeout: float = 5, names: bool = False) -> str:
        self.statements.append((node, statement))
        if self.fail_on and self.fail_on[0] == node and self.fail_on[1] in statement:
            raise RuntimeError(f"{node}: stubbed failure")
        if "SHOW SLAVE STATUS" in statement:
            return f"Gtid_IO_Pos: {self.received[node]}\n"
        if "MASTER_GTID_WAIT" in statement:
            return "0\n"
        if "Binlog Dump" in statement:
            return self.dump_threads.get(node, "")
        return ""

    def round(self) -> None:
        self.c.step()

    def on(self, node: str) -> list[str]:
        return [s for n, s in self.statements if n == node]


def replica(io: str = "No", **extra: Any) -> dict[str, Any]:
    return {"mariadb": "up", "read_only": True, "replicating_from": ADDRESS["db1"],
            "io_running": io, "sql_running": "Yes", **extra}  # fmt: skip


def test_the_replica_that_received_most_is_promoted_and_the_other_follows_it(
    tmp_path: Path,
) -> None:
    # db3 received one transaction more than db2 (the acknowledged one), though db2 had
    # applied as much: received counts, not applied.
    s = Stub(tmp_path, {"db2": replica(gtid_current_pos="0-1-10"),
                        "db3": replica(gtid_current_pos="0-1-9")},
             {"db2": "0-1-10", "db3": "0-1-11"})  # fmt: skip
    s.round()
    assert s.c.primary == "db3" and s.c.epoch == 2
    assert "STOP SLAVE IO_THREAD" in s.on("db2") and "STOP SLAVE IO_THREAD" in s.on("db3")
    assert any("MASTER_GTID_WAIT('0-1-11'" in x for x in s.on("db3"))
    assert any("read_only = OFF" in x for x in s.on("db3"))
    assert any(f"MASTER_HOST = '{ADDRESS['db3']}'" in x for x in s.on("db2"))
    assert not any("read_only = OFF" in x for x in s.on("db2"))


@pytest.mark.parametrize("db3", [None, {"mariadb": "unresponsive"}, {"mariadb": "down"}])
def test_no_promotion_while_another_node_cannot_vouch_for_what_it_holds(
    tmp_path: Path, db3: dict[str, Any] | None
) -> None:
    s = Stub(tmp_path, {"db2": replica(), "db3": db3}, {"db2": "0-1-10", "db3": "0-1-11"})
    s.round()
    assert s.c.primary == "db1" and not s.statements


def test_no_promotion_even_when_the_primary_says_it_is_down_while_a_replica_is_unheard(
    tmp_path: Path,
) -> None:
    s = Stub(tmp_path, {"db1": {"mariadb": "down"}, "db2": replica(), "db3": None},
             {"db2": "0-1-10", "db3": "0-1-11"})  # fmt: skip
    s.round()
    assert s.c.primary == "db1" and not s.statements


def test_a_replica_that_still_receives_vouches_for_the_primary(tmp_path: Path) -> None:
    s = Stub(tmp_path, {"db2": replica(), "db3": replica(io="Yes")}, {"db2": "", "db3": ""})
    s.round()
    assert s.c.primary == "db1" and not s.statements


@pytest.mark.parametrize("silent_for,promoted", [(20.0, True), (5.0, False)])
def test_a_wedged_primary_is_failed_over_though_its_replicas_still_hold_a_connection(
    tmp_path: Path, silent_for: float, promoted: bool
) -> None:
    # db1's agent answers: its MariaDB has answered no query for `silent_for` seconds, while
    # the replicas' IO threads still say Yes (a wedged server's heartbeats). 15 s counts.
    wedged = {"mariadb": "unresponsive"}
    s = Stub(tmp_path, {"db1": wedged, "db2": replica(io="Yes"), "db3": replica(io="Yes")},
             {"db2": "0-1-10", "db3": "0-1-11"})  # fmt: skip
    s.c.cfg["wedged_seconds"] = 15.0
    s.c.semisync = "ON"
    fenced = []
    s.c.post = lambda n, path, **kw: (
        (200, {}) if n != "db1" or fenced.append(path) or path == "/fence" else (503, wedged)
    )
    s.c.suspect_since = time.monotonic() - silent_for
    s.round()
    assert (s.c.primary == "db3") == promoted
    assert ("/fence" in fenced) == promoted, "it is fenced through its agent first"


def test_no_promotion_of_a_candidate_behind_a_fenced_earlier_primary(tmp_path: Path) -> None:
    # db2, an earlier primary now fenced and replicating from no one, holds up to 0-1-20;
    # db3, the only replica of the failed db1, received up to 0-1-11 only.
    fenced = {"mariadb": "up", "read_only": True, "replicating_from": "",
              "gtid_current_pos": "0-1-20"}  # fmt: skip
    s = Stub(tmp_path, {"db1": {"mariadb": "down"}, "db2": fenced, "db3": replica()},
             {"db3": "0-1-11"})  # fmt: skip
    s.c.semisync = "ON"
    s.round()
    assert s.c.primary == "db1"
    assert not any("read_only = OFF" in x for x in s.on("db3"))
    assert "START SLAVE IO_THREAD" in s.on("db3"), "it receives again after the refusal"


def test_the_new_primary_ends_its_old_dump_threads_before_it_takes_writes(
    tmp_path: Path,
) -> None:
    s = Stub(tmp_path, {"db2": replica(), "db3": replica()}, {"db2": "0-1-10", "db3": "0-1-11"})
    s.dump_threads = {"db3": "17\n23\n"}  # left from an earlier time db3 was primary
    s.round()
    assert s.c.primary == "db3"
    on_db3 = s.on("db3")
    writable = next(i for i, x in enumerate(on_db3) if "read_only = OFF" in x)
    kills = [i for i, x in enumerate(on_db3) if x.startswith("KILL CONNECTION")]
    assert [on_db3[i] for i in kills] == ["KILL CONNECTION 17", "KILL CONNECTION 23"]
    assert max(kills) < writable


def test_a_stop_that_fails_restarts_every_replica_it_touched(tmp_path: Path) -> None:
    s = Stub(tmp_path, {"db2": replica(), "db3": replica()}, {"db2": "0-1-10", "db3": "0-1-11"})
    s.fail_on = ("db3", "STOP SLAVE IO_THREAD")
    s.round()
    assert s.c.primary == "db1"
    assert "START SLAVE IO_THREAD" in s.on("db2") and "START SLAVE IO_THREAD" in s.on("db3")


def test_a_failure_after_the_promotion_never_sends_the_replicas_back_to_the_old_primary(
    tmp_path: Path,
) -> None:
    s = Stub(tmp_path, {"db2": replica(), "db3": replica()}, {"db2": "0-1-10", "db3": "0-1-11"})
    s.fail_on = ("db2", "CHANGE MASTER")
    s.round()
    assert s.c.primary == "db3"
    assert "START SLAVE IO_THREAD" not in s.on("db2") + s.on("db3")
