"""The testbed's web app: a page naming the server, a health check and a notes API.

Runs under gunicorn behind nginx on every app host. It reads its database endpoint
and credentials from /etc/testbed-app/app.ini (written by the deploy, mode 0600) and
talks to MariaDB with parameterised queries only: a note's text is data, never SQL.
"""

from __future__ import annotations

import configparser
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


def _settings() -> dict[str, Any]:
    parser = configparser.ConfigParser()
    if not parser.read(CONFIG):
        raise RuntimeError(f"cannot read {CONFIG}")
    db = parser["database"]
    return {
        "host": db["host"],
        "port": db.getint("port", 3306),
        "user": db["user"],
        "password": db["password"],
        "database": db["name"],
        "connection_timeout": 3,
        "autocommit": False,
    }


def connect() -> Any:
    return mysql.connector.connect(**_settings())


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message, "status": status}), status


@app.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[Response, int]:
    return error(exc.code or 500, exc.description or exc.name)


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
    try:
        conn = connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
        finally:
            conn.close()
    except Exception as exc:  # any failure to reach the database means unhealthy
        return jsonify({"status": "unhealthy", "server": SERVER, "error": type(exc).__name__}), 503
    return jsonify({"status": "ok", "server": SERVER}), 200


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
        cur.execute("INSERT INTO notes (text, server) VALUES (%s, %s)", (text, SERVER))
        note_id = cur.lastrowid
        conn.commit()  # 201 only once the database has committed the note
    finally:
        conn.close()
    return jsonify({"id": note_id, "text": text, "server": SERVER}), 201


@app.get("/api/notes/<int:note_id>")
def get_note(note_id: int) -> tuple[Response, int]:
    conn = connect()
    try:
        cur = conn.cursor(dictionary=True)
        cur.execute("SELECT id, text, server, created FROM notes WHERE id = %s", (note_id,))
        row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return error(404, f"no note {note_id}")
    row["created"] = row["created"].isoformat()
    return jsonify(row), 200


@app.get("/api/notes")
def list_notes() -> tuple[Response, int]:
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        return error(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    conn = connect()
    try:
        cur = conn.cursor(dictionary=True)
        cur.execute(
            "SELECT id, text, server, created FROM notes ORDER BY id DESC LIMIT %s", (int(raw),)
        )
        rows = cur.fetchall()
    finally:
        conn.close()
    for row in rows:
        row["created"] = row["created"].isoformat()
    return jsonify({"notes": rows}), 200
