"""The testbed's web app: a page naming the server, a health check and a notes API.

Runs under gunicorn behind nginx on every app host. It reads its database endpoints
and credentials from /etc/testbed-app/app.ini (written by the deploy, mode 0600) and
talks to MariaDB with parameterised queries only: a note's text is data, never SQL.

What needs the database, and what it gets while there is no primary (docs/drills.md):
* `/` and `/health` need none: the load balancer's check proves nginx and the app live,
  so a database fault never takes the web servers out of the pool.
* Writes go to the writer endpoint (the one leased primary). With none, they are refused
  with 503 before anything is sent; a connection lost during COMMIT answers 500, since
  the note may or may not have been saved.
* Reads go to the primary too (read-your-writes); when it cannot be reached they fall
  back to the reader endpoint (any node that answers), which may lag a little.
"""

from __future__ import annotations

import configparser
import contextlib
import html
import os
import socket
import time
from typing import Any

import mysql.connector
from flask import Flask, Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from werkzeug.exceptions import HTTPException

CONFIG = os.environ.get("TESTBED_APP_CONFIG", "/etc/testbed-app/app.ini")
MAX_TEXT = 1000
"""Longest note text accepted, in characters."""
MAX_BODY = 16 * 1024
"""Largest request body accepted, in bytes (nginx enforces the same limit)."""
MAX_LIMIT = 100
READ_RETRY_SECONDS = 0.6
"""One more try of the reader endpoint after this long (its checks run every 0.5 s)."""

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
SERVER = socket.gethostname()

# Metrics by route (the URL rule, not the raw path, so ids do not explode the series) and
# status. gunicorn runs several worker processes: prometheus_client's multiprocess mode
# sums them (PROMETHEUS_MULTIPROC_DIR, a fresh directory at each start of the unit).
REQUESTS = Counter("testbed_app_requests_total", "Requests served", ["route", "method", "status"])
LATENCY = Histogram(
    "testbed_app_request_seconds",
    "Time to serve a request",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


@app.before_request
def start_timer() -> None:
    g.started = time.perf_counter()


@app.after_request
def count(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule else "unknown"
    if route != "/metrics":
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        LATENCY.labels(route, request.method, str(response.status_code)).observe(elapsed)
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    return response


@app.get("/metrics")
def metrics() -> Response:
    """For the monitoring agent on this host (nginx does not pass /metrics through)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry  # noqa: N811 - single process
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _settings(endpoint: str = "port") -> dict[str, Any]:
    parser = configparser.ConfigParser()
    if not parser.read(CONFIG):
        raise RuntimeError(f"cannot read {CONFIG}")
    db = parser["database"]
    return {
        "host": db["host"],
        "port": db.getint(endpoint),  # port (the writer) or read_port, both in app.ini
        "user": db["user"],
        "password": db["password"],
        "database": db["name"],
        # Short: a paused primary accepts the TCP connection but never greets; a read
        # must fall back to a replica well within the client's patience.
        "connection_timeout": 2,
        "autocommit": False,
    }


class NoWriter(Exception):
    """No database node takes writes right now (failover in progress, or none leased)."""


def connect() -> Any:
    """A connection to the writer endpoint (the primary), or NoWriter."""
    try:
        return mysql.connector.connect(**_settings())
    except mysql.connector.Error as exc:
        raise NoWriter(str(exc)) from exc


def read(sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Rows from the primary when it answers; else from any node (the reader endpoint).

    Reads are idempotent, so one that loses its connection to the primary mid-query (the
    writer endpoint cuts sessions to a node that stops being primary) is asked again of
    the reader endpoint rather than failed."""
    try:
        conn = connect()
    except NoWriter:
        conn = None
    if conn is not None:
        try:
            return _rows(conn, sql, params)
        except mysql.connector.Error:
            pass
    try:
        return _rows(mysql.connector.connect(**_settings("read_port")), sql, params)
    except mysql.connector.Error:
        # The reader's first choice may have just gone silent (a paused primary, before
        # its check fails): half a second later the endpoint has moved on.
        time.sleep(READ_RETRY_SECONDS)
        return _rows(mysql.connector.connect(**_settings("read_port")), sql, params)


def _rows(conn: Any, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    try:
        cur = conn.cursor(dictionary=True)
        cur.execute(sql, params)
        return list(cur.fetchall())
    finally:
        with contextlib.suppress(mysql.connector.Error):  # the endpoint may have cut it
            conn.close()


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message, "status": status}), status


@app.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[Response, int]:
    return error(exc.code or 500, exc.description or exc.name)


@app.errorhandler(NoWriter)
def no_writer(exc: NoWriter) -> tuple[Response, int]:
    response, status = error(503, "no database node accepts writes right now; try again shortly")
    response.headers["Retry-After"] = "2"
    return response, status


@app.errorhandler(mysql.connector.Error)
def database_error(exc: mysql.connector.Error) -> tuple[Response, int]:
    return error(503, f"the database could not answer ({type(exc).__name__})")


@app.after_request
def served_by(response: Response) -> Response:
    response.headers["X-App-Server"] = SERVER
    return response


@app.get("/")
def index() -> str:
    name = html.escape(SERVER)
    return (
        "<!doctype html><html><head><title>www.foobar.com</title></head>"
        f"<body><h1>www.foobar.com</h1><p>Served by <b id=server>{name}</b>.</p></body></html>"
    )


@app.get("/health")
def health() -> tuple[Response, int]:
    """nginx and the app answer. Deliberately not the database: every web server shares
    it, so a database fault would take them all out of the pool at once (docs/drills.md)."""
    return jsonify({"status": "ok", "server": SERVER}), 200


@app.get("/health/database")
def health_database() -> tuple[Response, int]:
    """Whether this host reaches a current database node: the primary, or a replica that
    applies. The load balancer sends /api/ only to web servers where this is 200."""
    try:
        node = read("SELECT @@hostname AS node", ())[0]["node"]
    except mysql.connector.Error as exc:
        return jsonify({"status": "unhealthy", "server": SERVER, "error": type(exc).__name__}), 503
    return jsonify({"status": "ok", "server": SERVER, "database": node}), 200


@app.post("/api/notes")
def create_note() -> tuple[Response, int]:
    if not request.is_json:
        return error(400, "expected a JSON body (Content-Type: application/json)")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return error(400, 'malformed JSON: expected an object like {"text": "..."}')
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        return error(400, "field 'text' is required and must be a non-empty string")
    if len(text) > MAX_TEXT:
        return error(400, f"field 'text' is longer than {MAX_TEXT} characters")
    conn = connect()
    try:
        cur = conn.cursor()
        try:
            cur.execute("INSERT INTO notes (text, server) VALUES (%s, %s)", (text, SERVER))
            note_id = cur.lastrowid
            cur.execute("SELECT @@hostname")
            (db_node,) = cur.fetchone()
        except mysql.connector.Error as exc:
            # Nothing is committed before COMMIT (autocommit off): a definite refusal.
            raise NoWriter(str(exc)) from exc
        try:
            conn.commit()  # 201 only once the database has committed the note
        except mysql.connector.Error:
            # Lost during COMMIT: it may have been applied. Say so; never claim either.
            return error(500, "the database connection was lost during commit: "
                         "the note may or may not have been saved")  # fmt: skip
    finally:
        conn.close()
    return jsonify({"id": note_id, "text": text, "server": SERVER, "db": db_node}), 201


@app.get("/api/notes/<int:note_id>")
def get_note(note_id: int) -> tuple[Response, int]:
    rows = read("SELECT id, text, server, created FROM notes WHERE id = %s", (note_id,))
    if not rows:
        return error(404, f"no note {note_id}")
    row = rows[0]
    row["created"] = row["created"].isoformat()
    return jsonify(row), 200


@app.get("/api/notes")
def list_notes() -> tuple[Response, int]:
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        return error(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    rows = read(
        "SELECT id, text, server, created FROM notes ORDER BY id DESC LIMIT %s", (int(raw),)
    )
    for row in rows:
        row["created"] = row["created"].isoformat()
    return jsonify({"notes": rows}), 200
