"""The `app` role: the Flask app (app/) under gunicorn, as a systemd service.

Flask and gunicorn come from Debian's packages; mysql-connector-python, which Debian
does not package, is installed into a venv (with the system's site-packages) from a
wheel the deploy downloads once on the control machine, pinned like the rest of
requirements.txt, so the machines need no access to a Python package index.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from provision import PROJECT_ROOT, STATE_DIR, dbcluster, layout, secrets
from provision.engine import (
    Command,
    File,
    Handler,
    HostContext,
    Packages,
    Role,
    Service,
    Step,
    StepError,
    render,
    restart_handler,
    system_user,
)

HOME = "/opt/testbed-app"
VENV = f"{HOME}/venv"
CONFIG = "/etc/testbed-app/app.ini"
UNIT = "testbed-app"
CONNECTOR = "mysql-connector-python"
WRITER_CONFIG = "/etc/haproxy/db-writer.cfg"
APP_DIR = PROJECT_ROOT / "app" / "testbed_app"


def app_files() -> list[Path]:
    """The app's files to ship, relative to APP_DIR: its modules and its page templates."""
    files = [*APP_DIR.glob("*.py"), *APP_DIR.glob("templates/*.html")]
    return sorted(path.relative_to(APP_DIR) for path in files)


def connector_version() -> str:
    from importlib.metadata import version

    return version(CONNECTOR)


def connector_wheel(arch: str, python: str) -> Path:
    """The pinned connector's wheel for the machines' platform, downloaded once."""
    wheels = STATE_DIR / "wheels"
    pyver = python.replace(".", "")
    pattern = f"mysql_connector_python-{connector_version()}-cp{pyver}-*{arch}.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", python, "--platform", f"manylinux_2_28_{arch}",
         "-d", str(wheels), f"{CONNECTOR}=={connector_version()}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = sorted(wheels.glob(pattern))
    if res.returncode != 0 or not found:
        raise StepError(f"cannot download the {CONNECTOR} wheel: {res.stderr.strip()[-400:]}")
    return found[0]


def workers(cpus: str) -> int:
    """gunicorn's advice, 2 x CPUs + 1, capped so small test machines keep memory."""
    return min(2 * max(int(cpus or 1), 1) + 1, 8)


def steps(ctx: HostContext) -> list[Step]:
    topo = ctx.topology
    wheel = connector_wheel(ctx.facts.get("arch", "x86_64"), ctx.facts.get("python", "3.11"))
    code = [
        File(
            f"{HOME}/testbed_app/{path}",
            (APP_DIR / path).read_text(),
            notify=["restart testbed-app"],
            name=f"Ensure the app's {path} is up to date.",
        )
        for path in app_files()
    ]
    return [
        Packages(
            ("python3-flask", "gunicorn", "python3-venv", "python3-prometheus-client"),
            name="Ensure Flask, gunicorn and the venv tools are installed.",
        ),
        system_user("testbed-app", HOME),
        File(
            f"{HOME}/wheels/{wheel.name}",
            wheel.read_bytes(),
            name=f"Ensure the {CONNECTOR} wheel is on the host.",
        ),
        Command(
            f"Ensure {CONNECTOR} {connector_version()} is installed in the app's venv.",
            check=f'{VENV}/bin/python -c "from importlib.metadata import version as v; '
            f"assert v('{CONNECTOR}') == '{connector_version()}'\" 2>/dev/null",
            run=f"python3 -m venv --system-site-packages {VENV} && "
            f"{VENV}/bin/pip install -q --no-index --no-deps {HOME}/wheels/{wheel.name}",
            notify=["restart testbed-app"],
        ),
        *code,
        Packages(("haproxy",), name="Ensure HAProxy is installed (the database writer endpoint)."),
        # The operator's tasks check a failover by writing through this host's endpoint
        # with the app's own account (fab db.failover, db.switchover): they need a client
        # even where no database runs (hardened's web hosts).
        Packages(("mariadb-client",), name="Ensure the MariaDB client is installed."),
        File(
            WRITER_CONFIG,
            render(
                "app",
                "db-writer.cfg.j2",
                listen=layout.DB_WRITER_LISTEN,
                read_listen=layout.DB_READER_LISTEN,
                check_port=topo.port("dbcheck"),
                db_port=topo.port("mysql"),
                # The failover controller and the agents' fences wait for these checks
                # (dbcluster.ENDPOINT_DRAIN_SECONDS): change them together.
                inter=f"{dbcluster.ENDPOINT_CHECK_MS}ms",
                fall=1,
                nodes=[(d.name, dbcluster.node_address(topo, d)) for d in dbcluster.db_hosts(topo)],
                read_nodes=[
                    (d.name, dbcluster.node_address(topo, d))
                    for d in sorted(dbcluster.db_hosts(topo), key=lambda d: d.name != ctx.host.name)
                ],
            ),
            validate="haproxy -c -q -f {path}",
            notify=["reload db-writer"],
            name="Ensure the writer endpoint knows every database node.",
        ),
        File(
            "/etc/systemd/system/db-writer.service",
            render(
                "app", "db-writer.service.j2", listen=layout.DB_WRITER_LISTEN, config=WRITER_CONFIG
            ),
            notify=["restart db-writer"],
            name="Ensure the writer endpoint's unit is up to date.",
        ),
        Service("db-writer", name="Ensure the writer endpoint is running."),
        *dbcluster.client_ca_steps(topo, "testbed-app"),
        File(
            CONFIG,
            render(
                "app",
                "app.ini.j2",
                db_ca=layout.DB_CLIENT_CA if dbcluster.uses_tls(topo) else "",
                db_host=layout.host_of(layout.DB_WRITER_LISTEN),
                db_port=layout.port_of(layout.DB_WRITER_LISTEN),
                read_port=layout.port_of(layout.DB_READER_LISTEN),
                db_user=layout.APP_USER,
                db_password=secrets.password("db-app"),
                db_name=layout.DATABASE,
                site_names=topo.site.names,
                csrf_secret=secrets.password("app-csrf"),
            ),
            mode="0600",
            owner="testbed-app",
            group="testbed-app",
            notify=["restart testbed-app"],
            name="Ensure the app's database and site settings are in place (0600).",
        ),
        File(
            f"/etc/systemd/system/{UNIT}.service",
            render(
                "app",
                "testbed-app.service.j2",
                home=HOME,
                venv=VENV,
                config=CONFIG,
                listen=layout.APP_LISTEN,
                workers=workers(ctx.facts.get("cpus", "1")),
            ),
            notify=["restart testbed-app"],
            name="Ensure the app's systemd unit is up to date.",
        ),
        Service(UNIT, name="Ensure the app is enabled and running."),
    ]


ROLE = Role(
    "app",
    "app",
    steps,
    handlers=[
        restart_handler("db-writer"),
        Handler("reload db-writer", "Reload the writer endpoint.", "systemctl reload db-writer"),
        restart_handler(UNIT),
    ],
)
