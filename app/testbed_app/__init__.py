"""The testbed's web app: the notes page, a health check and a notes API.

Runs under gunicorn behind nginx on every app host. It reads its database endpoints,
credentials and site settings from /etc/testbed-app/app.ini (written by the deploy, mode
0600) and talks to MariaDB with parameterised queries only: a note's text is data, never SQL.

What needs the database, and what it gets while there is no primary (docs/drills.md):
* `/health` needs none: the load balancer's check proves nginx and the app live, so a
  database fault never takes the web servers out of the pool.
* `/` (the notes page) only asks the database on a best-effort basis: each of its reads
  has short timeouts and the page waits at most PAGE_DEADLINE for them, then renders with
  what it got ("no database node answers right now" when nothing). It always answers 200.
* Writes go to the writer endpoint (the one leased primary). With none, they are refused
  with 503 before anything is sent; a connection lost during COMMIT answers 500, since
  the note may or may not have been saved.
* Reads go to the primary too (read-your-writes); when it cannot be reached they fall
  back to the reader endpoint (any node that answers), which may lag a little.

The page's form (`POST /notes`) stores a note through the same code as `POST /api/notes`
and is protected against cross-site posting by a CSRF token and an Origin check
(docs/web.md, "The notes page").
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import mysql.connector
from flask import Flask, Response, g, jsonify, make_response, redirect, render_template, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

CONFIG = os.environ.get("TESTBED_APP_CONFIG", "/etc/testbed-app/app.ini")
MAX_TEXT = 1000
"""Longest note text accepted, in characters."""
MAX_BODY = 16 * 1024
"""Largest request body accepted, in bytes (nginx enforces the same limit)."""
MAX_LIMIT = 100
READ_RETRY_SECONDS = 0.6
CONNECT_TIMEOUT = 2
"""Seconds (whole: the connector's unit) for each connection to a database endpoint, and
each read on it: a paused primary accepts the TCP connection but never greets."""
WRITE_PATIENCE = 4.5
"""Seconds a note may wait for a writer before the answer is 503. A write that was refused
before COMMIT stored nothing, so it is tried again: a writer endpoint that drops the
primary for a moment (its agent's poll stalled on a busy machine) costs no request. The
last try starts early enough to end within the balancer's 5 s `timeout server`."""
WRITE_RETRY_SECONDS = 0.25
"""One more try of the reader endpoint after this long (its checks run every 0.5 s)."""
PAGE_NOTES = 20
"""How many of the latest notes the page lists."""
PAGE_DB_TIMEOUT = 1
"""Connect, read and write timeout of each of the page's database connections, in whole
seconds (the connector's unit): a paused node accepts the connection but never answers."""
PAGE_DEADLINE = 1.0
"""The page waits at most this long, in seconds, for its database reads (run in parallel),
then renders with what it has: it must answer quickly even when no database node does."""
DEFAULT_SITE = "www.foobar.com"
"""The site's name when app.ini names none (the page's title)."""
CSRF_COOKIE = "__Host-csrf"
"""The browser's random nonce; the form carries an HMAC of it (the CSRF token). `__Host-`:
browsers accept it only Secure, for path /, set by this very host (no Domain)."""
CSRF_FIELD = "csrf_token"
NONCE = re.compile(r"[A-Za-z0-9_-]{32,128}")
ORIGIN = re.compile(r"https://([a-z0-9.-]+)(?::([0-9]{1,5}))?", re.IGNORECASE)
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""Content-Security-Policy of the HTML pages: no script at all, inline CSS, forms post
only to this site, and no framing (clickjacking)."""
NO_WRITER = "no database node accepts writes right now; try again shortly"

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
        "connection_timeout": CONNECT_TIMEOUT,
        "autocommit": False,
        # TLS when app.ini names a CA (option db_tls): the server's certificate must chain
        # to it; its name is not checked (the local endpoint picks the node).
        **(
            {"ssl_ca": db["ssl_ca"], "ssl_verify_cert": True, "ssl_verify_identity": False}
            if db.get("ssl_ca")
            else {"ssl_disabled": True}
        ),
    }


class NoWriter(Exception):
    """No database node takes writes right now (failover in progress, or none leased)."""


KEPT_PER_ENDPOINT = 2
"""Idle connections a worker keeps per endpoint for its next requests. A gunicorn worker
serves one request at a time, which holds at most one connection to each endpoint; the
page's reads run beside it, on their own."""
_kept: dict[str, list[Any]] = {}
_kept_lock = threading.Lock()


def _reused(kept: dict[str, list[Any]], key: str) -> Any | None:
    """An idle connection kept for `key`, if one still answers a ping. The endpoints cut
    every session to a node they stop using (`on-marked-down shutdown-sessions`): such a
    connection fails its ping at once and is dropped, so a failover moves kept connections
    exactly as it moves new ones."""
    while True:
        with _kept_lock:
            idle = kept.get(key)
            if not idle:
                return None
            conn = idle.pop()
        try:
            conn.ping(reconnect=False)
            return conn
        except Exception:  # cut by the endpoint, or timed out: never used again
            _discard(conn)


def _discard(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


@contextlib.contextmanager
def connection(key: str, opener: Callable[[], Any]) -> Iterator[Any]:
    """A database connection for one use: one this worker kept from an earlier request when
    it still answers, else a new one from `opener`. Each new connection costs a handshake
    (TLS, with db_tls: most of a request's time under load, docs/throughput.md), so a
    connection whose use raised nothing is kept again, its transaction ended first (the next
    use sees fresh data). After any error it is closed and forgotten: a connection in doubt
    (a failed query, a COMMIT whose answer was lost) is never used again."""
    kept = _kept  # where it goes back to, even from a page read that ends late
    conn = _reused(kept, key) or opener()
    try:
        yield conn
    except BaseException:
        _discard(conn)
        raise
    try:
        conn.rollback()
    except Exception:  # cut after a use that succeeded (a COMMIT that was answered): the
        _discard(conn)  # answer stands; the connection is just not kept
        return
    with _kept_lock:
        idle = kept.setdefault(key, [])
        if len(idle) < KEPT_PER_ENDPOINT:
            idle.append(conn)
            return
    _discard(conn)


def _open(endpoint: str) -> Callable[[], Any]:
    return lambda: mysql.connector.connect(**_settings(endpoint))


def connect() -> Any:
    """A new connection to the writer endpoint (the primary), or NoWriter."""
    try:
        return mysql.connector.connect(**_settings())
    except mysql.connector.Error as exc:
        raise NoWriter(str(exc)) from exc


def writer() -> contextlib.AbstractContextManager[Any]:
    """A connection to the writer endpoint (the primary), or NoWriter."""
    return connection("port", connect)


def read(sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Rows from the primary when it answers; else from any node (the reader endpoint).

    Reads are idempotent, so one that loses its connection to the primary mid-query (the
    writer endpoint cuts sessions to a node that stops being primary) is asked again of
    the reader endpoint rather than failed."""
    try:
        with writer() as conn:
            return _rows(conn, sql, params)
    except (NoWriter, mysql.connector.Error):
        pass
    try:
        with connection("read_port", _open("read_port")) as conn:
            return _rows(conn, sql, params)
    except mysql.connector.Error:
        # The reader's first choice may have just gone silent (a paused primary, before
        # its check fails): half a second later the endpoint has moved on.
        time.sleep(READ_RETRY_SECONDS)
        with connection("read_port", _open("read_port")) as conn:
            return _rows(conn, sql, params)


def _rows(conn: Any, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    cur = conn.cursor(dictionary=True)
    cur.execute(sql, params)
    return list(cur.fetchall())


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message, "status": status}), status


@app.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> tuple[Response, int]:
    return error(exc.code or 500, exc.description or exc.name)


@app.errorhandler(NoWriter)
def no_writer(exc: NoWriter) -> tuple[Response, int]:
    response, status = error(503, NO_WRITER)
    response.headers["Retry-After"] = "2"
    return response, status


def database_message(exc: mysql.connector.Error) -> str:
    return f"the database could not answer ({type(exc).__name__})"


@app.errorhandler(mysql.connector.Error)
def database_error(exc: mysql.connector.Error) -> tuple[Response, int]:
    return error(503, database_message(exc))


@app.after_request
def served_by(response: Response) -> Response:
    response.headers["X-App-Server"] = SERVER
    return response


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


class Refused(Exception):
    """A note that is not stored, with the status and message both front ends answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def checked_text(text: object) -> str:
    """The note's text if it may be stored, else Refused (the API's and the form's rules)."""
    if not isinstance(text, str) or not text.strip():
        raise Refused(400, "field 'text' is required and must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise Refused(400, f"field 'text' is longer than {MAX_TEXT} characters")
    return text


def save_note(text: str) -> dict[str, Any]:
    """Store a checked note through the writer endpoint; the stored note once committed.

    A try refused before COMMIT stored nothing: it is tried again until WRITE_PATIENCE
    runs out, then NoWriter (503). Refused(500) when the connection was lost during COMMIT
    (it may or may not have been saved): never tried again, so no note is stored twice."""
    started = time.monotonic()
    while True:
        try:
            return store_note(text)
        except NoWriter:
            waited = time.monotonic() - started + WRITE_RETRY_SECONDS
            if waited > WRITE_PATIENCE - CONNECT_TIMEOUT:
                raise
            time.sleep(WRITE_RETRY_SECONDS)


def store_note(text: str) -> dict[str, Any]:
    """One try of save_note: NoWriter when nothing was stored (no writer, or refused before
    COMMIT); Refused(500) when the connection was lost during COMMIT."""
    with writer() as conn:
        try:
            # A kept connection the endpoint cut since its ping fails here, before anything
            # was sent (the connector checks the connection for a new cursor): a refusal.
            cur = conn.cursor()
            cur.execute("INSERT INTO notes (text, server) VALUES (%s, %s)", (text, SERVER))
            note_id = cur.lastrowid
            cur.execute("SELECT @@hostname")
            (db_node,) = cur.fetchone()
        except mysql.connector.Error as exc:
            # Nothing is committed before COMMIT (autocommit off): a definite refusal.
            raise NoWriter(str(exc)) from exc
        try:
            conn.commit()  # stored only once the database has committed the note
        except mysql.connector.Error:
            # Lost during COMMIT: it may have been applied. Say so; never claim either.
            raise Refused(500, "the database connection was lost during commit: "
                          "the note may or may not have been saved") from None  # fmt: skip
    return {"id": note_id, "text": text, "server": SERVER, "db": db_node}


@app.post("/api/notes")
def create_note() -> tuple[Response, int]:
    if not request.is_json:
        return error(400, "expected a JSON body (Content-Type: application/json)")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        return error(400, 'malformed JSON: expected an object like {"text": "..."}')
    try:
        note = save_note(checked_text(data.get("text")))
    except Refused as exc:
        return error(exc.status, exc.message)
    return jsonify(note), 201


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
    # ASCII digits only: str.isdigit() also takes "²" or "٣", which int() then refuses
    # (or reads as another number): a 500 where the client sent a bad number.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        return error(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    rows = read(
        "SELECT id, text, server, created FROM notes ORDER BY id DESC LIMIT %s", (int(raw),)
    )
    for row in rows:
        row["created"] = row["created"].isoformat()
    return jsonify({"notes": rows}), 200


# --------------------------------------------------------------------------- the notes page


@dataclass(frozen=True)
class Site:
    """The site's settings from app.ini's [site] (written by the deploy)."""

    names: tuple[str, ...]
    """Its host names, lower case: a form may be posted only from a page of one of them."""
    csrf_secret: str
    """Keys the CSRF tokens; the same on every web server. Empty: every form post fails."""

    @property
    def name(self) -> str:
        return self.names[0] if self.names else DEFAULT_SITE


def site() -> Site:
    """The [site] settings; empty ones (every form refused) when app.ini lacks them."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CONFIG)
    section = parser["site"] if parser.has_section("site") else {}
    names = tuple(name.lower() for name in section.get("names", "").split())
    return Site(names, section.get("csrf_secret", "").strip())


def csrf_token(secret: str, nonce: str) -> str:
    """The form's token for a browser's nonce: only a holder of the secret can make it."""
    return hmac.new(secret.encode(), f"testbed-csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


def token_ok(secret: str, nonce: str, token: str) -> bool:
    """Whether `token` was made by this site for this browser's nonce (its cookie)."""
    if not secret or not NONCE.fullmatch(nonce) or not token:
        return False
    return hmac.compare_digest(csrf_token(secret, nonce), token)


def origin_ok(origin: str | None, names: tuple[str, ...]) -> bool:
    """An absent Origin passes (the token decides); a present one must be
    https://<one of the site's names>[:port]. "null" (a sandboxed or privacy-sensitive
    context) and anything else fails."""
    if origin is None:
        return True
    match = ORIGIN.fullmatch(origin)
    if not match:
        return False
    host, port = match.group(1).lower(), match.group(2)
    return host in names and (port is None or 1 <= int(port) <= 65535)


def page_connect(endpoint: str) -> Any:
    """A connection for the page's best-effort reads: the endpoint's (`port`, the writer,
    or `read_port`, the reader) with PAGE_DB_TIMEOUT on connecting, reading and writing."""
    settings = _settings(endpoint)
    settings["connection_timeout"] = PAGE_DB_TIMEOUT
    settings["read_timeout"] = PAGE_DB_TIMEOUT
    settings["write_timeout"] = PAGE_DB_TIMEOUT
    return mysql.connector.connect(**settings)


WRITER_STATUS = "SELECT @@hostname AS node, @@gtid_binlog_pos AS position"
"""The primary's name and the GTIDs it has written (any user may read both)."""
READER_STATUS = "SELECT @@hostname AS node, @@gtid_current_pos AS position"
"""The reader's name and the GTIDs it has applied (or written, when it is the primary)."""
LATEST_NOTES = "SELECT id, text, server, created FROM notes ORDER BY id DESC LIMIT %s"


@dataclass(frozen=True)
class Look:
    """What one endpoint's node said: its name, GTID position and the latest notes."""

    node: str
    position: str
    notes: list[dict[str, Any]]


def look(endpoint: str, status_sql: str) -> Look:
    with connection(f"page-{endpoint}", lambda: page_connect(endpoint)) as conn:
        cur = conn.cursor(dictionary=True)
        cur.execute(status_sql)
        (row,) = cur.fetchall()
        cur.execute(LATEST_NOTES, (PAGE_NOTES,))
        notes = list(cur.fetchall())
    return Look(str(row["node"]), str(row["position"] or ""), notes)


def within(deadline: float, calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each call's result, run in parallel; None for one that failed or had not finished
    after `deadline` seconds. Such a call's thread is left to end on its own (a daemon:
    its socket timeouts end it, and it never holds up a worker's exit)."""
    results: dict[str, Any] = {}

    def run(key: str, call: Callable[[], Any]) -> None:
        try:
            results[key] = call()
        except Exception as exc:  # best effort: whatever went wrong, the page renders
            app.logger.info("the page's %s read failed: %s: %s", key, type(exc).__name__, exc)

    threads = [
        threading.Thread(target=run, args=(key, call), name=f"page-read-{key}", daemon=True)
        for key, call in calls.items()
    ]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return {key: results.get(key) for key in calls}


def gtid_position(text: str) -> dict[int, int]:
    """MariaDB's GTID position ("0-1-57,1-2-3") as {domain: sequence number}."""
    position: dict[int, int] = {}
    for gtid in text.split(","):
        if gtid.strip():
            domain, _server, seq = (int(part) for part in gtid.strip().split("-"))
            position[domain] = max(seq, position.get(domain, 0))
    return position


def transactions_behind(writer: str, reader: str) -> int:
    """How many transactions the writer has in its binary log that the reader has not
    applied, by GTID sequence number in each replication domain (0: in step)."""
    ahead, have = gtid_position(writer), gtid_position(reader)
    return sum(max(0, seq - have.get(domain, 0)) for domain, seq in ahead.items())


def lag_text(writer: Look | None, reader: Look | None) -> str:
    if writer is None or reader is None:
        return "unknown"
    try:
        behind = transactions_behind(writer.position, reader.position)
    except ValueError:
        return "unknown"
    if behind == 0:
        return "in step"
    return f"{behind} transaction{'s' if behind != 1 else ''} behind"


def _shown(note: dict[str, Any]) -> dict[str, Any]:
    created = note.get("created")
    return {
        "id": note.get("id"),
        "text": note.get("text"),
        "server": note.get("server"),
        "created": created.strftime("%Y-%m-%d %H:%M:%S") if created else "",
        "created_iso": created.isoformat() if created else "",
    }


def page(status: int = 200, *, error: str | None = None, text: str = "") -> Response:
    """The notes page: the form, the latest notes and the status panel. Its database reads
    are best effort (PAGE_DEADLINE): with no node answering, it says so and still renders."""
    settings = site()
    nonce = request.cookies.get(CSRF_COOKIE, "")
    new_nonce = not NONCE.fullmatch(nonce)
    if new_nonce:
        nonce = secrets.token_urlsafe(32)
    found = within(
        PAGE_DEADLINE,
        {
            "writer": lambda: look("port", WRITER_STATUS),
            "reader": lambda: look("read_port", READER_STATUS),
        },
    )
    writer, reader = found["writer"], found["reader"]
    source = writer or reader
    added = request.args.get("added", type=int) if request.method == "GET" else None
    body = render_template(
        "index.html",
        site=settings.name,
        server=SERVER,
        writer=writer.node if writer else None,
        reader=reader.node if reader else None,
        lag=lag_text(writer, reader),
        notes=[_shown(note) for note in source.notes] if source else None,
        notes_from="writer" if writer else "reader" if reader else None,
        token=csrf_token(settings.csrf_secret, nonce) if settings.csrf_secret else "",
        csrf_field=CSRF_FIELD,
        error=error,
        text=text,
        added=added,
        max_text=MAX_TEXT,
    )
    response = make_response(body, status)
    if new_nonce:
        response.set_cookie(
            CSRF_COOKIE, nonce, path="/", secure=True, httponly=True, samesite="Strict"
        )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@app.get("/")
def index() -> Response:
    return page()


def posted_form() -> tuple[dict[str, str], str | None]:
    """The posted form's fields (the first of each name), and why it cannot be used as
    posted, if so: not a URL-encoded form, or not valid UTF-8 (then its fields are read
    with U+FFFD in place of the bad bytes, for the token and to show the text back)."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return {}, "expected a form body (Content-Type: application/x-www-form-urlencoded)"
    raw = request.get_data(cache=False)
    refusal = None
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        refusal = "the form is not valid UTF-8"
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields, refusal


@app.post("/notes")
def post_note() -> Response:
    """The page's form: the API's rules and storage, behind a CSRF token and an Origin
    check; 303 back to the page once stored, else the page with the refusal (status as
    the API's), the text kept in the box."""
    settings = site()
    forbidden = "refused: this form must be posted from this site's own page (reload it and retry)"
    if not origin_ok(request.headers.get("Origin"), settings.names):
        return page(403, error=forbidden)
    if request.content_length is not None and request.content_length > MAX_BODY:
        return page(413, error=f"the form is larger than {MAX_BODY // 1024} KiB")
    try:
        fields, refusal = posted_form()
    except RequestEntityTooLarge:
        return page(413, error=f"the form is larger than {MAX_BODY // 1024} KiB")
    nonce = request.cookies.get(CSRF_COOKIE, "")
    if not token_ok(settings.csrf_secret, nonce, fields.get(CSRF_FIELD, "")):
        return page(403, error=forbidden)
    # A textarea's line breaks are posted as CRLF: store what the person typed.
    text = fields.get("text", "").replace("\r\n", "\n")
    if refusal:
        return page(400, error=refusal, text=text)
    try:
        note = save_note(checked_text(text))
    except Refused as exc:
        return page(exc.status, error=exc.message, text=text)
    except NoWriter:
        response = page(503, error=NO_WRITER, text=text)
        response.headers["Retry-After"] = "2"
        return response
    except mysql.connector.Error as exc:
        return page(503, error=database_message(exc), text=text)
    return redirect(f"/?added={int(note['id'])}#note-{int(note['id'])}", 303)
