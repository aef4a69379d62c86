"""The `db` role: MariaDB on the db-primary, the app's schema and a least-privilege app user.

Until replication lands (issue 4) only the db-primary runs MariaDB and every app host
writes to it over the private network.
"""

from __future__ import annotations

from provision import PROJECT_ROOT, secrets
from provision.engine import (
    Command,
    File,
    HostContext,
    Packages,
    Role,
    Service,
    Step,
    render,
    restart_handler,
)
from provision.topology import Host, Topology

DATABASE = "testbed"
APP_USER = "app"
APP_GRANTS = "SELECT, INSERT"
"""All the app needs: it adds and reads notes; DDL is the deploy's job, as root."""
CONFIG = "/etc/mysql/mariadb.conf.d/60-webinfra-testbed.cnf"


def primary(topology: Topology) -> Host:
    return topology.with_role("db-primary")[0]


def endpoint(topology: Topology, app_host: Host) -> str:
    """The address an app host uses for the database (the primary, on a shared network)."""
    return str(topology.address_for(app_host, primary(topology)))


def app_clients(topology: Topology) -> list[tuple[str, str]]:
    """(app host, the address it connects from): the app user may connect from these only."""
    db = primary(topology)
    return [(h.name, str(topology.address_for(db, h))) for h in topology.with_role("app")]


def _user_sql(source: str, password: str) -> str:
    user = f"'{APP_USER}'@'{source}'"
    return (
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '{password}';\n"
        f"ALTER USER {user} IDENTIFIED BY '{password}';\n"
        f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {user};\n"
        f"GRANT {APP_GRANTS} ON {DATABASE}.notes TO {user};\n"
    )


def _user_check(source: str, password: str) -> str:
    # Prints 1 only when the user exists with this password and exactly these grants.
    return (
        "SELECT COUNT(*) FROM mysql.user u JOIN mysql.tables_priv t "
        "ON t.User = u.User AND t.Host = u.Host "
        f"WHERE u.User = '{APP_USER}' AND u.Host = '{source}' "
        f"AND u.authentication_string = PASSWORD('{password}') "
        f"AND t.Db = '{DATABASE}' AND t.Table_name = 'notes' "
        "AND t.Table_priv = 'Select,Insert' "
        "AND (SELECT COUNT(*) FROM mysql.db "
        f"WHERE User = '{APP_USER}' AND Host = '{source}') = 0;\n"
    )


def steps(ctx: HostContext) -> list[Step]:
    if not ctx.host.has_role("db-primary"):
        return []
    topo, host = ctx.topology, ctx.host
    password = secrets.password("db-app")
    schema = (PROJECT_ROOT / "app" / "schema.sql").read_text()
    listen = [str(a) for n, a in host.addresses.items() if n != "public"]
    result: list[Step] = [
        Packages(("mariadb-server",), name="Ensure MariaDB is installed."),
        File(
            CONFIG,
            render("db", "server.cnf.j2", host=host, bind_address=",".join(listen)),
            notify=["restart mariadb"],
            name="Ensure MariaDB listens on the private network only.",
        ),
        Service("mariadb", name="Ensure MariaDB is enabled and running."),
        Command(
            f"Ensure the {DATABASE} database and its schema exist.",
            check=f"mariadb -N -B -e \"SHOW TABLES FROM {DATABASE} LIKE 'notes'\" | grep -qx notes",
            run=f"mariadb -e 'CREATE DATABASE IF NOT EXISTS {DATABASE}' && mariadb {DATABASE}",
            run_stdin=schema,
        ),
    ]
    for name, source in app_clients(topo):
        result.append(
            Command(
                f"Ensure the app user may connect from {name} ({source}) with {APP_GRANTS} only.",
                check='[ "$(mariadb -N -B)" = 1 ]',
                check_stdin=_user_check(source, password),
                run="mariadb",
                run_stdin=_user_sql(source, password),
            )
        )
    return result


ROLE = Role("db", "db", steps, handlers=[restart_handler("mariadb")])
