"""`fab load`: the Locust command lines it builds, the options it refuses, the summary it
reads from Locust's reports, and that it leaves no process behind (stand-in processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision import PROJECT_ROOT, STATE_DIR
from provision.ops import load
from provision.ops.common import TaskError
from tests.fabcli import run_fab


def a_plan(tmp_path: Path, workers: int = 2, **changes: object) -> load.Plan:
    settings: dict[str, object] = {
        "url": "https://127.0.0.1:8443",
        "workers": workers,
        "users": 6,
        "rate": 2.0,
        "seconds": 15,
        "prefix": tmp_path / "run",
        "ca": tmp_path / "site-ca.crt",
        "master_port": 40123,
        **changes,
    }
    return load.Plan(**settings)  # type: ignore[arg-type]


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_one_worker_is_one_plain_headless_locust_run(tmp_path: Path) -> None:
    cmd = a_plan(tmp_path, workers=1).master_command()
    assert cmd[:3] == [sys.executable, "-m", "locust"]
    assert option(cmd, "-f").endswith("loadtests/qps.py")
    assert "--headless" in cmd
    assert not {"--master", "--worker", "--expect-workers"} & set(cmd)
    assert option(cmd, "--host") == "https://127.0.0.1:8443"
    assert option(cmd, "--users") == option(cmd, "--spawn-rate") == "6"
    assert option(cmd, "--run-time") == "15s"
    assert option(cmd, "--csv") == str(tmp_path / "run")
    assert option(cmd, "--html") == str(tmp_path / "run.html")
    assert option(cmd, "--json-file") == str(tmp_path / "run")


def test_the_master_listens_on_loopback_only_and_waits_for_every_worker(tmp_path: Path) -> None:
    p = a_plan(tmp_path, workers=3, connect_timeout=20)
    cmd = p.master_command()
    assert "--master" in cmd and "--headless" in cmd
    assert option(cmd, "--master-bind-host") == "127.0.0.1"
    assert option(cmd, "--master-bind-port") == "40123"
    assert option(cmd, "--expect-workers") == "3"
    assert option(cmd, "--expect-workers-max-wait") == "20"


def test_a_worker_connects_to_the_master_on_loopback_and_checks_the_same_target(
    tmp_path: Path,
) -> None:
    cmd = a_plan(tmp_path).worker_command()
    assert "--worker" in cmd and "--headless" not in cmd and "--master" not in cmd
    assert option(cmd, "--master-host") == "127.0.0.1"
    assert option(cmd, "--master-port") == "40123"
    assert option(cmd, "--host") == "https://127.0.0.1:8443"
    # The clock and the reports are the master's alone.
    assert not {"--run-time", "--csv", "--html", "--json-file"} & set(cmd)


def test_every_process_gets_the_rate_the_ca_and_the_inventory(tmp_path: Path) -> None:
    env = a_plan(tmp_path, rate=0.5).environment({"PATH": "/bin"})
    assert env["LOAD_RATE"] == "0.5" and env["TESTBED_CA"] == str(tmp_path / "site-ca.crt")
    assert "TESTBED_INVENTORY" not in env and env["PATH"] == "/bin"
    env = a_plan(tmp_path, inventory_file="inv.yml").environment({})
    assert env["TESTBED_INVENTORY"] == str(Path("inv.yml").resolve())


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"workers": 0}, "--workers must be 1 or more, got 0"),
        ({"workers": -2}, "--workers must be 1 or more"),
        ({"users": 0}, "--users must be 1 or more"),
        ({"workers": 4, "users": 3}, "--users 3 is fewer than --workers 4"),
        ({"rate": 0.0}, "--rate must be a positive number"),
        ({"rate": float("nan")}, "--rate must be a positive number"),
        ({"seconds": 0}, "--seconds must be 1 or more"),
        ({"connect_timeout": 0}, "--connect-timeout must be 1 or more"),
    ],
)
def test_bad_options_are_refused_naming_the_option(
    settings: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "workers": 2,
        "users": 10,
        "rate": 2.0,
        "seconds": 30,
        "connect_timeout": 30,
        **settings,
    }
    with pytest.raises(TaskError, match=message.replace("(", r"\(")):
        load.validate(**args)  # type: ignore[arg-type]


def test_seed_is_loaded_on_its_forwarded_port_with_reports_under_the_state_folder() -> None:
    p = load.plan(2, 10, 2.0, 30, topology="seed")
    assert p.url == "https://127.0.0.1:8443"
    assert p.prefix.parent == STATE_DIR / "loadtests" and p.prefix.name.startswith("load-")
    assert p.master_port != 5557 or p.workers == 1  # a free port, not Locust's default
    assert p.distributed and not load.plan(1, 10, 2.0, 30, topology="seed").distributed


def test_the_summary_adds_up_locust_s_final_counts_and_names_each_worker(tmp_path: Path) -> None:
    entries = [{"num_requests": 120, "num_failures": 0}, {"num_requests": 60, "num_failures": 2}]
    workers = {"workers": {"worker-0": {"requests": 92}, "worker-1": {"requests": 88}}}
    summary = load.summarize(entries, workers, a_plan(tmp_path))
    assert (summary.requests, summary.failures, summary.seconds) == (180, 2, 15.0)
    assert summary.rps == 12.0 and summary.problems() == []
    assert summary.line() == (
        "load: 2 of 2 workers reported (92, 88); 180 requests, 2 failures, 12.0 req/s over 15.0 s"
    )
    single = load.summarize(entries, None, a_plan(tmp_path, workers=1))
    assert single.line() == "load: 180 requests, 2 failures, 12.0 req/s over 15.0 s"


def test_a_worker_that_sent_nothing_or_no_request_at_all_is_a_failure(tmp_path: Path) -> None:
    entries = [{"num_requests": 40, "num_failures": 0}]
    workers = {"workers": {"worker-0": {"requests": 40}, "worker-1": {"requests": 0}}}
    summary = load.summarize(entries, workers, a_plan(tmp_path))
    assert summary.problems() == ["only 1 of 2 workers reported requests"]
    assert load.summarize(entries, None, a_plan(tmp_path)).workers_reported == 0
    assert load.summarize([], None, a_plan(tmp_path, workers=1)).problems() == [
        "no request was made"
    ]


# Stand-ins for Locust: what the supervisor sees of a master and its workers.
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers: it is dead once its state says so.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True  # reaped in between


def test_a_worker_that_dies_before_the_run_stops_everything_naming_it(tmp_path: Path) -> None:
    p = a_plan(tmp_path)
    failing = [sys.executable, "-c", "print('qps.py: refusing to aim load'); raise SystemExit(1)"]
    with pytest.raises(TaskError) as caught, load.started([]) as procs:
        master = load.spawn("master", SLEEPER, dict(os.environ), None, None)
        procs.append(master)
        worker = load.spawn("worker 1", failing, dict(os.environ), p.worker_log(1), None)
        procs.append(worker)
        load.supervise(p, master, [worker], load.time.monotonic)
    assert "worker 1 exited with code 1 before the run started" in str(caught.value)
    assert "refusing to aim load" in str(caught.value)
    assert gone(master.popen.pid) and gone(worker.popen.pid)


def test_workers_that_never_connect_are_reported_and_stopped(tmp_path: Path) -> None:
    p = a_plan(tmp_path, connect_timeout=1)
    says = (
        "import sys; print('Waiting for workers to be ready, 1 of 2 connected'); "
        "print('Gave up waiting for workers to connect'); sys.exit(1)"
    )
    with pytest.raises(TaskError) as caught, load.started([]) as procs:
        master = load.spawn("master", [sys.executable, "-c", says], dict(os.environ), None, None)
        procs.append(master)
        worker = load.spawn("worker 1", SLEEPER, dict(os.environ), p.worker_log(1), None)
        procs.append(worker)
        load.supervise(p, master, [worker], load.time.monotonic)
    assert "the 2 workers did not all connect to the master on 127.0.0.1:40123 within 1 s" in str(
        caught.value
    )
    assert "1 of 2 connected" in str(caught.value)
    assert gone(worker.popen.pid)


def test_fab_load_refuses_zero_workers_with_exit_code_2() -> None:
    res = run_fab("load", "--workers", "0")
    assert res.returncode == 2
    assert "load: --workers must be 1 or more, got 0" in res.stderr


def test_fab_load_help_explains_every_option() -> None:
    res = run_fab("--help", "load")
    assert res.returncode == 0
    for name in ("workers", "users", "rate", "seconds", "out", "connect-timeout", "topology"):
        assert f"--{name}" in res.stdout
    assert "127.0.0.1" in res.stdout and "LOAD_RATE" in res.stdout


def test_a_sigterm_to_the_task_still_stops_what_it_started(tmp_path: Path) -> None:
    """`fab load` killed politely (SIGTERM, as `timeout` does) stops its processes first."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import os, sys, time\n"
        "from provision.ops import load\n"
        "with load.started([]) as procs:\n"
        f"    procs.append(load.spawn('worker 1', {SLEEPER!r}, dict(os.environ), None, None))\n"
        f"    open({str(pid_file)!r}, 'w').write(str(procs[0].popen.pid))\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 10
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the stand-in task did not start its child"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert not gone(child)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        parent.kill()
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)
