"""The database node's agent, the parts that are pure logic: how a poll's answers become
the state the controller and the endpoints read, and how a failed poll is classified
(provision/roles/db/files/dbcheck.py runs on every db host; its reads of a real MariaDB
are proved by the failover tests and the drills on hardened)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests import scripts


def load_module() -> Any:
    return scripts.load("provision/roles/db/files/dbcheck.py")


def test_a_primary_s_answers_read_as_a_writable_node_with_semi_sync() -> None:
    m = load_module()
    row = (0, "0-41-377", "0-41-377", "", "ON", "2", "0")
    state = m.state_of(row, None)
    assert state["mariadb"] == "up"
    assert state["read_only"] is False
    assert state["gtid_current_pos"] == "0-41-377"
    assert (state["semisync_master"], state["semisync_clients"], state["semisync_no_tx"]) == (
        "ON",
        2,
        0,
    )
    assert state["replicating_from"] == "" and state["io_running"] == ""


def test_a_replica_s_answers_keep_the_client_s_spelling_of_a_missing_lag() -> None:
    m = load_module()
    row = (1, "0-41-9", "0-41-9", "0-41-9", None, None, None)
    slave = {
        "Master_Host": "192.168.57.41",
        "Slave_IO_Running": "Connecting",
        "Slave_SQL_Running": "Yes",
        "Seconds_Behind_Master": None,
    }
    state = m.state_of(row, slave)
    assert state["read_only"] is True
    assert state["semisync_master"] == "?"  # the plugin's status is not there
    assert state["semisync_clients"] == 0
    assert state["replicating_from"] == "192.168.57.41"
    assert (state["io_running"], state["sql_running"], state["lag"]) == (
        "Connecting",
        "Yes",
        "NULL",
    )


class Refusing:
    """Stands in for PyMySQL's connection: every query raises what the server would."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.closed = False

    def cursor(self, *args: Any) -> Any:
        raise self.error

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    "error,kind",
    [
        (OSError(2013, "Lost connection to MySQL server during query (timed out)"), "PollTimeout"),
        (TimeoutError("timed out"), "PollTimeout"),
        (OSError(2003, "Can't connect to MySQL server (No such file or directory)"), "PollError"),
        (OSError(1226, "User 'dbcheck' has exceeded the 'max_user_connections'"), "PollError"),
    ],
)
def test_a_failed_poll_is_slow_or_refused_and_its_connection_is_dropped(
    error: Exception, kind: str
) -> None:
    m = load_module()
    poller = m.Poller()
    kept = Refusing(error)
    poller.conn, poller.budget = kept, 0.4
    # A kept connection that fails other than by time is opened again once; here the
    # reopening fails the same way (the server is gone), so the error counts.
    poller.connect = lambda budget: setattr(poller, "conn", Refusing(error))
    with pytest.raises(getattr(m, kind)):
        poller.poll(0.4)
    assert kept.closed, "a connection that failed is never used again"
    assert poller.conn is None


class Answering:
    """Stands in for PyMySQL's connection to a server that takes `delay` seconds over each
    query: like PyMySQL, a query gives up with "timed out" once `_read_timeout` has passed."""

    def __init__(self, delay: float, row: tuple[Any, ...]) -> None:
        self.delay, self.row = delay, row
        self._read_timeout = self._write_timeout = 10.0

    def cursor(self, *args: Any) -> Any:
        conn = self

        class Cursor:
            description: list[tuple[str, ...]] = []
            asked = ""

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                pass

            def execute(self, statement: str) -> None:
                if conn.delay > conn._read_timeout:
                    time.sleep(conn._read_timeout)
                    raise OSError(2013, "Lost connection to MySQL server during query (timed out)")
                time.sleep(conn.delay)
                self.asked = statement

            def fetchone(self) -> Any:
                return conn.row if self.asked.startswith("SELECT") else None  # no replica

        return Cursor()

    def close(self) -> None:
        pass


PRIMARY_ROW = (0, "0-41-377", "0-41-377", "", "ON", "2", "0")


def test_a_poll_s_budget_covers_both_of_its_queries() -> None:
    """Two queries of 0.3 s each do not fit in a 0.4 s poll: the second gets what is left
    (PyMySQL's time-out is per read; the old client call was bounded as a whole)."""
    m = load_module()
    poller = m.Poller()
    poller.conn = Answering(0.3, PRIMARY_ROW)
    started = time.monotonic()
    with pytest.raises(m.PollTimeout):
        poller.poll(0.4)
    assert time.monotonic() - started < 0.55
    assert poller.conn is None
    poller.conn = Answering(0.1, PRIMARY_ROW)
    assert poller.poll(0.4)["gtid_current_pos"] == "0-41-377"


def test_an_unreadable_answer_is_not_a_server_that_is_down() -> None:
    """A row the agent cannot read is its own problem ("unresponsive" in the agent), never
    a PollError, which would report MariaDB down and let the controller fail over sooner."""
    m = load_module()
    poller = m.Poller()
    poller.conn = Answering(0.0, (0, "", "", "", "ON", "two", "0"))
    with pytest.raises(ValueError):
        poller.poll(0.4)


def agent_with(m: Any, state: dict[str, Any], lease_required: bool = True) -> Any:
    """An agent whose last poll read `state` just now (no thread, no MariaDB)."""
    agent = m.Agent({"lease_required": lease_required, "lease_seconds": 3.0, "drain_seconds": 0.3})
    agent.cache = {"mariadb": "up", "at": time.monotonic(), **state}
    return agent


PRIMARY = {"read_only": False, "replicating_from": "", "sql_running": ""}


def test_a_primary_serves_reads_only_while_it_holds_its_lease() -> None:
    """A primary that lost its lease is cut off and about to fence itself; ending its
    sessions then commits writes no replica has, so no reader may be sent there (the
    partition drill once listed such a note, then read 404 after the failover)."""
    m = load_module()
    agent = agent_with(m, PRIMARY)
    agent.controller_until = time.monotonic() + 3
    agent.held_lease = True
    assert agent.readable() == (True, "readable")
    agent.controller_until = time.monotonic() - 0.1  # the lease ran out, not fenced yet
    assert agent.readable() == (False, "no lease")
    assert agent.writable() == (False, "no lease")
    agent.fenced, agent.fence_reason = True, "lease expired"
    assert agent.readable() == (False, "fenced (lease expired)")
    # Without automatic failover there are no leases: the primary always serves reads.
    assert agent_with(m, PRIMARY, lease_required=False).readable() == (True, "readable")


def test_a_replica_serves_reads_while_it_applies_even_when_a_poll_is_slow() -> None:
    m = load_module()
    replica = {"read_only": True, "replicating_from": "192.168.57.22", "sql_running": "Yes"}
    assert agent_with(m, replica).readable() == (True, "readable")
    stopped = dict(replica, sql_running="No")
    assert agent_with(m, stopped).readable() == (False, "a replica that does not apply")
    slow = agent_with(m, {})
    slow.cache = {"mariadb": "unresponsive", "at": time.monotonic()}
    assert slow.readable()[0] is False, "never applied: no grace"
    slow.applying_at = time.monotonic()
    assert slow.readable() == (True, "readable (a poll was slow)")
    down = agent_with(m, {})
    down.cache = {"mariadb": "down", "at": time.monotonic()}
    down.applying_at = time.monotonic()
    assert down.readable() == (False, "down")


def test_a_fence_ends_sessions_only_after_the_endpoints_dropped_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kill comes `drain_seconds` after the node stopped answering 200: from the fence
    when the controller fences a leased node, from the lease's end on a self-fence."""
    m = load_module()
    statements: list[tuple[float, str]] = []

    def fake_sql(statement: str, timeout: float = 1.0) -> str:
        statements.append((time.monotonic(), statement))
        if statement.startswith("SELECT ID"):
            return "41\n42\n"
        return "1\n" if statement == "SELECT @@read_only" else ""

    monkeypatch.setattr(m, "sql", fake_sql)
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    # The fence's own thread is replaced by a call here, so the timings are this test's.
    monkeypatch.setattr(m.Agent, "ensure_enforced", lambda self: None)

    agent = agent_with(m, PRIMARY)
    agent.held_lease, agent.controller_until = True, time.monotonic() + 3
    fenced_at = time.monotonic()
    agent.fence("failover (epoch 2)", 2)
    assert agent.readable()[0] is False and agent.writable()[0] is False  # at once
    agent.enforce_fence()
    kill = next(t for t, s in statements if s.startswith("KILL"))
    assert 0.3 <= kill - fenced_at < 0.45
    # Sessions ended, no more writes, then the ended sessions' semi-sync waits.
    assert [s for _, s in statements][1:] == [
        "KILL CONNECTION 41;KILL CONNECTION 42;",
        "SET GLOBAL read_only = ON",
        "SELECT @@read_only",
        m.WAITERS_QUERY,
        "SET GLOBAL rpl_semi_sync_master_enabled = OFF",
    ]

    statements.clear()
    agent = agent_with(m, PRIMARY)
    agent.held_lease, agent.controller_until = True, time.monotonic() - 0.25  # ran out
    fenced_at = time.monotonic()
    agent.fence("lease expired")
    agent.enforce_fence()
    kill = next(t for t, s in statements if s.startswith("KILL"))
    assert 0.03 <= kill - fenced_at < 0.15, "the wait counts from the lease's end"


def test_a_fence_is_enforced_even_when_semi_sync_cannot_be_switched_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Switching semi-sync off needs a privilege a node deployed before it lacks: the fence
    (read_only) must not wait on it. A drill once left a fenced node writable that way."""
    m = load_module()
    logged: list[tuple[str, dict[str, Any]]] = []

    def fake_sql(statement: str, timeout: float = 1.0) -> str:
        if "rpl_semi_sync_master_enabled" in statement:
            raise m.subprocess.CalledProcessError(
                1, "mariadb", stderr="ERROR 1227 (42000): Access denied; you need SUPER"
            )
        return "1\n" if statement == "SELECT @@read_only" else "0\n"

    monkeypatch.setattr(m, "sql", fake_sql)
    monkeypatch.setattr(m, "log", lambda event, **fields: logged.append((event, fields)))
    monkeypatch.setattr(m.Agent, "ensure_enforced", lambda self: None)
    agent = agent_with(m, PRIMARY)
    agent.fence("failover (epoch 2)", 2)
    agent.enforce_fence()
    assert ("fence-enforced", {"killed": 1, "semisync_waits_ended": 0}) in logged
    errors = [f for e, f in logged if e == "error"]
    assert errors and "Access denied" in errors[0]["error"]
    assert agent.semisync_off_pending
    # The watch loop tries again while the node stays fenced, and stops once it worked.
    switched: list[str] = []
    monkeypatch.setattr(m, "sql", lambda statement, timeout=1.0: switched.append(statement) or "0")
    agent.cfg.update(peers=[], port=9200, address="10.0.0.1")
    agent.cache["read_only"] = True
    agent.watch_once()
    assert "SET GLOBAL rpl_semi_sync_master_enabled = OFF" in switched
    assert not agent.semisync_off_pending


def test_a_fence_laid_again_while_its_thread_waits_is_drained_from_the_new_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fenced, unfenced by a newer lease, fenced again while the first fence's thread still
    waits: that thread must wait out the new drain, not the first one's."""
    m = load_module()
    kills: list[float] = []

    def fake_sql(statement: str, timeout: float = 1.0) -> str:
        if statement.startswith("KILL"):
            kills.append(time.monotonic())
        if statement.startswith("SELECT ID"):
            return "41\n"
        return "1\n" if statement == "SELECT @@read_only" else "0\n"

    monkeypatch.setattr(m, "sql", fake_sql)
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    agent = agent_with(m, PRIMARY)
    agent.fence("failover (epoch 2)", 2)  # its thread starts and waits 0.3 s
    time.sleep(0.1)
    agent.fenced = False  # a newer epoch's lease lifted it (grant)
    agent.fence("failover (epoch 4)", 4)  # the running thread is reused
    second = time.monotonic()
    deadline = time.monotonic() + 2
    while not kills and time.monotonic() < deadline:
        time.sleep(0.02)
    assert kills and kills[0] - second >= 0.28
