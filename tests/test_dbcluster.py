"""Which node a deploy may treat as primary, and which transactions a node holds alone.

Pure logic over NodeState values as `dbcluster.read_state` builds them from a server's
GTID variables; no machine is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from provision import dbcluster, topology
from provision.dbcluster import NodeState
from provision.engine import StepError

SEED = topology.load("seed")


def node(name: str, *, current: str, state: str = "", slave: str = "", **kw: object) -> NodeState:
    return NodeState(
        name, True, gtid_current_pos=current, gtid_binlog_state=state or current,
        gtid_slave_pos=slave, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_replica_that_is_only_behind_lacks_nothing_the_primary_has() -> None:
    primary = node("web2", current="0-3-60", state="0-2-50,0-3-60")
    behind = node("web1", current="0-2-40")
    assert dbcluster.missing_from(behind, primary) == []


def test_an_old_primary_with_unreplicated_commits_holds_them_alone() -> None:
    # web1 (server 2) committed 51 and 52 after web2 had received up to 50, then web2 was
    # promoted and wrote 51..60 under its own server id 3.
    new = node("web2", current="0-3-60", state="0-2-50,0-3-60", slave="0-2-50")
    old = node("web1", current="0-2-52")
    assert dbcluster.missing_from(old, new) == ["0-2-51..52"]


def test_a_single_unreplicated_commit_is_named_alone() -> None:
    new = node("web2", current="0-3-51", state="0-2-50,0-3-51")
    old = node("web1", current="0-2-51")
    assert dbcluster.missing_from(old, new) == ["0-2-51"]


def test_a_seeded_primary_knows_the_position_it_was_seeded_at() -> None:
    # Re-seeded (RESET MASTER) at 0-2-50, then promoted: its binlog starts at server 3.
    new = node("web2", current="0-3-55", state="0-3-55", slave="0-2-50")
    assert dbcluster.missing_from(node("web1", current="0-2-50"), new) == []
    assert dbcluster.missing_from(node("web1", current="0-2-53"), new) == ["0-2-51..53"]


def test_the_writable_node_is_the_primary() -> None:
    states = {
        "web1": node("web1", current="0-2-9", read_only=True),
        "web2": node("web2", current="0-3-12", read_only=False),
    }
    assert dbcluster.choose_primary(SEED, states) == "web2"


def test_two_writable_nodes_stop_the_deploy_as_split_brain() -> None:
    states = {
        "web1": node("web1", current="0-2-9", read_only=False),
        "web2": node("web2", current="0-3-12", read_only=False),
    }
    with pytest.raises(StepError, match="split brain: web1, web2"):
        dbcluster.choose_primary(SEED, states)


def test_no_node_is_unfenced_while_another_cannot_be_read() -> None:
    # The case: web2 took writes after a failover, then its MariaDB stopped.
    states = {
        "web1": node("web1", current="0-2-50", read_only=True),
        "web2": NodeState("web2", False, "MariaDB not answering: Can't connect"),
    }
    with pytest.raises(StepError, match="web2 cannot be read") as err:
        dbcluster.choose_primary(SEED, states)
    assert "systemctl start mariadb" in str(err.value)


def test_a_brand_new_node_does_not_block_the_first_deploy() -> None:
    states = {
        "web1": NodeState("web1", False, "not installed", fresh=True),
        "web2": NodeState("web2", False, "not installed", fresh=True),
    }
    assert dbcluster.choose_primary(SEED, states) == "web1"


def test_with_every_node_fenced_the_most_advanced_is_chosen() -> None:
    states = {
        "web1": node("web1", current="0-2-50", state="0-2-50", read_only=True),
        "web2": node("web2", current="0-3-52", state="0-2-50,0-3-52", read_only=True),
    }
    assert dbcluster.choose_primary(SEED, states) == "web2"


def test_diverged_fenced_nodes_stop_the_deploy_naming_what_each_holds() -> None:
    states = {
        "web1": node("web1", current="0-2-51", state="0-2-51", read_only=True),
        "web2": node("web2", current="0-3-52", state="0-2-50,0-3-52", read_only=True),
    }
    with pytest.raises(StepError, match="web1 has 0-2-51"):
        dbcluster.choose_primary(SEED, states)


def test_options_given_once_persist_until_set_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topology, "options_file", lambda name: tmp_path / f"{name}.json")
    defaults = topology.load("seed").options
    topology.save_options("seed", {**defaults, "auto_failover": True}, defaults)
    assert topology.load("seed").option("auto_failover") is True
    assert topology.load("seed", {"reencrypt": True}).option("auto_failover") is True
    topology.save_options("seed", {**defaults, "auto_failover": False}, defaults)
    assert topology.load("seed").option("auto_failover") is False
    assert not (tmp_path / "seed.json").exists()


class _Here:
    """This machine as a db host: commands run in a local `sh`, with `bin` first on PATH
    (a stand-in `mariadb` there)."""

    def __init__(self, bin_dir: Path) -> None:
        self.path = f"{bin_dir}:/usr/bin:/bin"

    def run(self, command: str, *, check: bool = True, stdin: str | None = None) -> object:
        import os
        import subprocess

        from provision.engine.remote import CommandResult

        res = subprocess.run(
            ["sh", "-c", command], input=stdin or "", capture_output=True, text=True,
            env={**os.environ, "PATH": self.path}, check=False,
        )  # fmt: skip
        result = CommandResult(res.returncode, res.stdout, res.stderr)
        if check and not result.ok:
            raise StepError(f"`{command}` exited {result.rc}")
        return result


def test_a_hung_mariadb_reads_as_not_answering_within_the_state_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wedged server takes the connection and never answers (the fenced old primary
    once did: docs/database.md); reading its state must give up and say so, or `fab
    db.status`, a deploy and a rejoin would hang with it."""
    import time

    fake = tmp_path / "mariadb"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(dbcluster, "STATE_TIMEOUT", 0.5)
    started = time.monotonic()
    state = dbcluster.read_state(SEED.hosts["web1"], _Here(tmp_path))  # type: ignore[arg-type]
    assert time.monotonic() - started < 3
    assert not state.reachable and state.role == "DOWN"
    assert "did not answer within 0.5 s: it may be hung" in state.error


def test_a_mariadb_that_refuses_reads_as_not_answering_with_its_own_error(
    tmp_path: Path,
) -> None:
    fake = tmp_path / "mariadb"
    fake.write_text("#!/bin/sh\necho 'ERROR 1040 (HY000): Too many connections' >&2; exit 1\n")
    fake.chmod(0o755)
    state = dbcluster.read_state(SEED.hosts["web1"], _Here(tmp_path))  # type: ignore[arg-type]
    assert not state.reachable
    assert "Too many connections" in state.error and "exited 1" in state.error
