"""The app's notes page and form (app/testbed_app), through Flask's test client.

No machine and no network: the app reads a temporary app.ini rendered from the role's own
template, and a small in-memory fake stands in for MariaDB behind the app's two connection
functions (`connect` for writes, `page_connect` for the page's reads), and each connection
the app keeps for reuse is a fake one too. One test talks to a
real (silent) socket on 127.0.0.1 to time the page against the real connector's timeouts.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pytest
from markupsafe import escape

from provision import PROJECT_ROOT
from provision.engine import render

# The app is not a package of this repository's Python path: it is shipped to the web
# servers as the top-level module `testbed_app` (provision/roles/app), so import it as such.
sys.path.insert(0, str(PROJECT_ROOT / "app"))


import testbed_app  # noqa: E402

SITE = "https://www.foobar.com:8443"
"""Where a browser on the host reaches the site (the forwarded HTTPS port)."""
SECRET = "unit-test-csrf-secret"
SERVED_BY = re.compile(r"Served by <b id=server>([^<]+)</b>")
"""What loadtests/qps.py and acceptance/test_web.py read from the page."""
TOKEN = re.compile(r'name="csrf_token" value="([^"]*)"')
TEXTAREA = re.compile(r'<textarea id="text" name="text" rows="3">\n(.*?)</textarea>', re.S)


# --------------------------------------------------------------------------- the fake database


class FakeDB:
    """MariaDB as the app sees it through its two endpoints, in memory.

    `down` holds the endpoints that do not answer ("port": the writer, "read_port": the
    reader); `hang` makes the page's connections block (a paused node) until released;
    `lose_commit` makes the next COMMIT fail with its outcome unknown."""

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.nodes = {"port": "web1", "read_port": "web2"}
        self.positions = {"port": "0-1-10", "read_port": "0-1-10"}
        self.down: set[str] = set()
        self.hang = threading.Event()
        self.release = threading.Event()
        self.lose_commit = False
        self.page_connections = 0
        self.writer_connections = 0
        self.writer_gone_for = 0
        """How many more writer connections fail before it answers (a brief gap)."""
        self.generation = 0
        """Bumped when the endpoints cut every session (a failover): older connections die."""
        self.cut_after_commit = False
        self.cut_before_cursor = False
        """The next cursor() finds its connection cut (after its ping passed)."""
        """The session is cut right after a COMMIT that succeeded (the next statement fails)."""

    def add(self, text: str, server: str = "web2") -> dict[str, Any]:
        created = dt.datetime(2026, 11, 29, 12, 0, len(self.notes) % 60, 123456)
        note = {"id": len(self.notes) + 1, "text": text, "server": server, "created": created}
        self.notes.append(note)
        return note

    def connect(self) -> FakeConnection:
        """Stands in for testbed_app.connect (the writer endpoint, for writes and reads)."""
        self.writer_connections += 1
        if self.writer_gone_for > 0:
            self.writer_gone_for -= 1
            raise testbed_app.NoWriter("2003: Can't connect to MySQL server")
        if "port" in self.down:
            raise testbed_app.NoWriter("2003: Can't connect to MySQL server")
        return FakeConnection(self, "port")

    def page_connect(self, endpoint: str) -> FakeConnection:
        """Stands in for testbed_app.page_connect (the page's best-effort reads)."""
        self.page_connections += 1
        if self.hang.is_set():
            self.release.wait(10)
        if endpoint in self.down:
            raise mysql.connector.errors.InterfaceError("2003: Can't connect to MySQL server")
        return FakeConnection(self, endpoint)


class FakeConnection:
    def __init__(self, db: FakeDB, endpoint: str) -> None:
        self.db, self.endpoint, self.pending = db, endpoint, list[str]()
        self.generation = db.generation

    def cursor(self, dictionary: bool = False) -> FakeCursor:
        if self.db.cut_before_cursor:
            self.db.cut_before_cursor = False
            raise mysql.connector.errors.OperationalError("MySQL Connection not available.")
        return FakeCursor(self, dictionary)

    def commit(self) -> None:
        if self.db.lose_commit:
            raise mysql.connector.errors.OperationalError("2013: Lost connection during query")
        for text in self.pending:
            self.db.add(text, testbed_app.SERVER)
        self.pending.clear()

    def rollback(self) -> None:
        if self.db.cut_after_commit:
            raise mysql.connector.errors.OperationalError("2013: Lost connection during query")
        self.pending.clear()

    def ping(self, reconnect: bool = False) -> None:
        if self.endpoint in self.db.down or self.generation != self.db.generation:
            raise mysql.connector.errors.InterfaceError("2013: Lost connection")

    def close(self) -> None:
        pass


class FakeCursor:
    def __init__(self, conn: FakeConnection, dictionary: bool) -> None:
        self.conn, self.dictionary = conn, dictionary
        self.rows: list[Any] = []
        self.lastrowid: int | None = None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        db, endpoint = self.conn.db, self.conn.endpoint
        sql = " ".join(sql.split())
        if sql.startswith("INSERT INTO notes (text, server) VALUES"):
            self.conn.pending.append(params[0])
            self.lastrowid = len(db.notes) + len(self.conn.pending)
            self.rows = []
        elif sql == "SELECT @@hostname":
            self.rows = [(db.nodes[endpoint],)]
        elif sql == "SELECT @@hostname AS node":
            self.rows = [{"node": db.nodes[endpoint]}]
        elif sql in (testbed_app.WRITER_STATUS, testbed_app.READER_STATUS):
            self.rows = [{"node": db.nodes[endpoint], "position": db.positions[endpoint]}]
        elif sql == testbed_app.LATEST_NOTES:
            self.rows = [dict(n) for n in reversed(db.notes)][: params[0]]
        elif sql == "SELECT id, text, server, created FROM notes WHERE id = %s":
            self.rows = [dict(n) for n in db.notes if n["id"] == params[0]]
        else:
            raise AssertionError(f"the fake database does not know {sql!r}")

    def fetchall(self) -> list[Any]:
        return list(self.rows)

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None


# --------------------------------------------------------------------------- fixtures


def _app_ini(port: int = 3307, read_port: int = 3308, secret: str = SECRET) -> str:
    """app.ini as the deploy writes it (the role's template, seed's site names)."""
    return render(
        "app",
        "app.ini.j2",
        db_host="127.0.0.1",
        db_port=port,
        read_port=read_port,
        db_user="app",
        db_password="pw",
        db_name="testbed",
        site_names=("www.foobar.com", "foobar.com"),
        db_ca="",
        csrf_secret=secret,
    )


@pytest.fixture(autouse=True)
def no_kept_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no connection kept for reuse (by an earlier test's fake)."""
    monkeypatch.setattr(testbed_app, "_kept", {})


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ini = tmp_path / "app.ini"
    ini.write_text(_app_ini())
    monkeypatch.setattr(testbed_app, "CONFIG", str(ini))
    return ini


@pytest.fixture
def db(config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDB]:
    fake = FakeDB()
    monkeypatch.setattr(testbed_app, "connect", fake.connect)
    monkeypatch.setattr(testbed_app, "page_connect", fake.page_connect)
    # A write waits 0.6 s for a writer here (4.5 s on the servers): tries every 0.25 s.
    monkeypatch.setattr(testbed_app, "WRITE_PATIENCE", testbed_app.CONNECT_TIMEOUT + 0.6)
    yield fake
    fake.release.set()


@pytest.fixture
def client() -> Any:
    return testbed_app.app.test_client()


def get(client: Any, path: str = "/", **kwargs: Any) -> Any:
    return client.get(path, base_url=SITE, **kwargs)


def post_form(client: Any, data: Any, origin: str | None = SITE, **kwargs: Any) -> Any:
    headers = {"Origin": origin} if origin is not None else {}
    return client.post("/notes", base_url=SITE, data=data, headers=headers, **kwargs)


def token_of(page: Any) -> str:
    match = TOKEN.search(page.get_data(as_text=True))
    assert match, "the page has no CSRF token field"
    return match.group(1)


def page_text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def element(html: str, ident: str) -> str:
    """The text inside the element with this id (ids quoted or not)."""
    match = re.search(rf'id="?{re.escape(ident)}"?[^>]*>(.*?)</', html, re.S)
    assert match, f"no element with id={ident}"
    return match.group(1)


# --------------------------------------------------------------------------- the page


def test_the_page_lists_the_latest_notes_escaped_with_their_server(db: FakeDB, client: Any) -> None:
    for i in range(24):
        db.add(f"note {i}", server="web1" if i % 2 else "web2")
    db.add("<script>alert(1)</script>", server="web2")
    reply = get(client)
    html = page_text(reply)
    assert reply.status_code == 200
    assert reply.mimetype == "text/html"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html
    items = re.findall(r'<li id="note-(\d+)" class="note"', html)
    assert [int(i) for i in items] == list(range(25, 5, -1))  # the newest 20, newest first
    newest = re.search(r'<li id="note-25".*?</li>', html, re.S)
    assert newest
    assert '<span class="note-server">web2</span>' in newest.group(0)
    assert 'datetime="2026-11-29T12:00:24.123456"' in newest.group(0)
    assert "#25" in newest.group(0)


def test_the_page_keeps_naming_the_server_that_answered(db: FakeDB, client: Any) -> None:
    html = page_text(get(client))
    match = SERVED_BY.search(html)
    assert match and match.group(1) == testbed_app.SERVER
    assert element(html, "server") == testbed_app.SERVER
    assert "<title>www.foobar.com" in html and "<h1>www.foobar.com</h1>" in html


def test_the_status_panel_names_the_writer_the_reader_and_the_lag(db: FakeDB, client: Any) -> None:
    html = page_text(get(client))
    assert element(html, "writer") == "web1"
    assert element(html, "reader") == "web2"
    assert element(html, "lag") == "in step"
    db.positions["read_port"] = "0-1-7"
    assert element(page_text(get(client)), "lag") == "3 transactions behind"
    db.positions["read_port"] = "0-1-9"
    assert element(page_text(get(client)), "lag") == "1 transaction behind"


def test_a_value_in_the_status_panel_is_escaped_too(db: FakeDB, client: Any) -> None:
    db.nodes["port"] = "<i>web1</i>"
    html = page_text(get(client))
    assert element(html, "writer") == "&lt;i&gt;web1&lt;/i&gt;"


def test_the_page_answers_200_with_a_notice_when_no_database_node_answers(
    db: FakeDB, client: Any
) -> None:
    db.add("invisible")
    db.down = {"port", "read_port"}
    started = time.monotonic()
    reply = get(client)
    elapsed = time.monotonic() - started
    html = page_text(reply)
    assert reply.status_code == 200
    assert elapsed < 0.5
    assert "Notes are unavailable: no database node answers right now" in html
    assert element(html, "writer") == "none"
    assert element(html, "reader") == "none"
    assert element(html, "lag") == "unknown"
    assert "invisible" not in html
    assert SERVED_BY.search(html)
    assert token_of(reply)  # the form is still there


def test_the_page_does_not_wait_for_a_node_that_never_answers(
    db: FakeDB, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(testbed_app, "PAGE_DEADLINE", 0.2)
    db.hang.set()  # a paused node: connections are accepted and never answered
    started = time.monotonic()
    reply = get(client)
    elapsed = time.monotonic() - started
    assert reply.status_code == 200
    assert 0.2 <= elapsed < 0.7
    assert "no database node answers right now" in page_text(reply)


def test_the_page_times_out_on_a_silent_database_with_the_real_connector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: Any
) -> None:
    """Both endpoints accept TCP and never greet (a paused MariaDB). The page answers
    within PAGE_DEADLINE, and the connector's own timeouts end its reads soon after."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        ini = tmp_path / "app.ini"
        ini.write_text(_app_ini(port=port, read_port=port))
        monkeypatch.setattr(testbed_app, "CONFIG", str(ini))
        started = time.monotonic()
        reply = get(client)
        elapsed = time.monotonic() - started
        assert reply.status_code == 200
        assert "no database node answers right now" in page_text(reply)
        assert testbed_app.PAGE_DEADLINE <= elapsed < testbed_app.PAGE_DEADLINE + 0.5
        deadline = time.monotonic() + 3 * testbed_app.PAGE_DB_TIMEOUT + 2
        while _page_reads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _page_reads(), "the page's reads outlived the connector's timeouts"


def _page_reads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("page-read-")]


def test_while_there_is_no_writer_the_notes_come_from_the_reader(db: FakeDB, client: Any) -> None:
    db.add("still readable")
    db.down = {"port"}
    html = page_text(get(client))
    assert "still readable" in html
    assert element(html, "writer") == "none"
    assert element(html, "reader") == "web2"
    assert element(html, "lag") == "unknown"
    assert "come from the reader (web2)" in html


def test_the_page_sets_a_secure_strict_http_only_nonce_cookie_once(db: FakeDB, client: Any) -> None:
    first = get(client)
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"{testbed_app.CSRF_COOKIE}=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie
    again = get(client)
    assert "Set-Cookie" not in again.headers
    assert token_of(again) == token_of(first)


def test_the_page_forbids_scripts_framing_and_caching(db: FakeDB, client: Any) -> None:
    reply = get(client)
    policy = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "form-action 'self'" in policy
    assert reply.headers["Cache-Control"] == "no-store"


def test_the_health_check_still_needs_no_database(
    config: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_database(*args: Any) -> None:
        raise AssertionError("/health asked the database")

    monkeypatch.setattr(testbed_app, "connect", no_database)
    monkeypatch.setattr(testbed_app, "page_connect", no_database)
    monkeypatch.setattr(mysql.connector, "connect", no_database)
    reply = get(client, "/health")
    assert reply.status_code == 200
    assert reply.get_json() == {"status": "ok", "server": testbed_app.SERVER}


# --------------------------------------------------------------------------- the form


def test_a_note_posted_through_the_form_is_stored_and_shown(db: FakeDB, client: Any) -> None:
    token = token_of(get(client))
    reply = post_form(client, {"text": "from the <form>", "csrf_token": token})
    assert reply.status_code == 303
    assert reply.headers["Location"] == "/?added=1#note-1"
    assert [n["text"] for n in db.notes] == ["from the <form>"]
    assert db.notes[0]["server"] == testbed_app.SERVER
    html = page_text(get(client, reply.headers["Location"]))
    assert element(html, "added") == "Note #1 was saved."
    assert "from the &lt;form&gt;" in html


def test_a_form_post_without_an_origin_header_is_judged_by_its_token(
    db: FakeDB, client: Any
) -> None:
    token = token_of(get(client))
    reply = post_form(client, {"text": "no origin", "csrf_token": token}, origin=None)
    assert reply.status_code == 303
    assert [n["text"] for n in db.notes] == ["no origin"]


def test_line_breaks_typed_in_the_box_are_stored_as_typed(db: FakeDB, client: Any) -> None:
    token = token_of(get(client))
    post_form(client, {"text": "one\r\ntwo", "csrf_token": token})
    assert db.notes[-1]["text"] == "one\ntwo"


@pytest.mark.parametrize(
    "token",
    ["", "0" * 64, "not-a-token"],
    ids=["empty", "wrong", "malformed"],
)
def test_a_form_post_with_a_bad_token_is_403_and_stores_nothing(
    db: FakeDB, client: Any, token: str
) -> None:
    get(client)
    reply = post_form(client, {"text": "forged", "csrf_token": token})
    assert reply.status_code == 403
    assert "must be posted from this site" in page_text(reply)
    assert "forged" not in page_text(reply)
    assert db.notes == []


def test_a_form_post_without_a_token_field_is_403(db: FakeDB, client: Any) -> None:
    get(client)
    assert post_form(client, {"text": "forged"}).status_code == 403
    assert db.notes == []


def test_a_token_is_only_good_with_the_browser_nonce_it_was_made_for(
    db: FakeDB, client: Any
) -> None:
    token = token_of(get(client))
    other = testbed_app.app.test_client()  # another browser: another nonce, or none
    assert post_form(other, {"text": "stolen token", "csrf_token": token}).status_code == 403
    get(other)
    assert post_form(other, {"text": "stolen token", "csrf_token": token}).status_code == 403
    assert db.notes == []


def test_a_form_post_is_403_when_the_deploy_set_no_secret(
    db: FakeDB, client: Any, config: Path
) -> None:
    config.write_text(_app_ini(secret=""))
    reply = get(client)
    assert reply.status_code == 200
    assert token_of(reply) == ""
    nonce = reply.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    forged = testbed_app.csrf_token("", nonce)
    assert post_form(client, {"text": "x", "csrf_token": forged}).status_code == 403
    assert db.notes == []


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://www.foobar.com.evil.example",
        "http://www.foobar.com",
        "null",
        "",
        "https://www.foobar.com/path",
        "https://user@www.foobar.com",
        "https://www.foobar.com:99999",
    ],
)
def test_a_form_post_from_a_foreign_origin_is_403_and_stores_nothing(
    db: FakeDB, client: Any, origin: str
) -> None:
    token = token_of(get(client))
    reply = post_form(client, {"text": "cross-site", "csrf_token": token}, origin=origin)
    assert reply.status_code == 403
    assert "cross-site" not in page_text(reply)
    assert db.notes == []


@pytest.mark.parametrize(
    "origin", ["https://www.foobar.com", "https://foobar.com", "https://WWW.FOOBAR.COM:8443"]
)
def test_a_form_post_from_any_of_the_site_names_is_accepted(
    db: FakeDB, client: Any, origin: str
) -> None:
    token = token_of(get(client))
    assert post_form(client, {"text": "ok", "csrf_token": token}, origin=origin).status_code == 303


@pytest.mark.parametrize(
    "text,message",
    [
        ("x" * 1001, "field &#39;text&#39; is longer than 1000 characters"),
        ("", "field &#39;text&#39; is required and must be a non-empty string"),
        ("  \r\n ", "field &#39;text&#39; is required and must be a non-empty string"),
        ("<b>" + "y" * 1000, "field &#39;text&#39; is longer than 1000 characters"),
    ],
    ids=["too-long", "empty", "blank", "too-long-html"],
)
def test_a_bad_note_is_refused_on_the_page_with_the_text_kept(
    db: FakeDB, client: Any, text: str, message: str
) -> None:
    token = token_of(get(client))
    reply = post_form(client, {"text": text, "csrf_token": token})
    html = page_text(reply)
    assert reply.status_code == 400
    assert element(html, "error") == message
    box = TEXTAREA.search(html)
    assert box and box.group(1) == escape(text.replace("\r\n", "\n"))
    assert db.notes == []


def test_a_form_that_is_not_utf_8_is_refused(db: FakeDB, client: Any) -> None:
    token = token_of(get(client))
    body = f"text=caf%E9&csrf_token={token}"
    reply = post_form(client, body, content_type="application/x-www-form-urlencoded")
    assert reply.status_code == 400
    assert element(page_text(reply), "error") == "the form is not valid UTF-8"
    assert db.notes == []


def test_a_post_that_is_not_a_form_is_refused(db: FakeDB, client: Any) -> None:
    token = token_of(get(client))
    reply = client.post(
        "/notes",
        base_url=SITE,
        json={"text": "json", "csrf_token": token},
        headers={"Origin": SITE},
    )
    assert reply.status_code == 403  # no token field, since no form
    assert db.notes == []


def test_a_form_post_with_no_writer_is_503_with_the_text_kept(db: FakeDB, client: Any) -> None:
    token = token_of(get(client))
    db.down = {"port"}
    reply = post_form(client, {"text": "later", "csrf_token": token})
    html = page_text(reply)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    assert element(html, "error") == testbed_app.NO_WRITER
    box = TEXTAREA.search(html)
    assert box and box.group(1) == "later"
    assert db.notes == []


def test_a_form_post_whose_commit_was_lost_says_it_may_have_been_saved(
    db: FakeDB, client: Any
) -> None:
    token = token_of(get(client))
    db.lose_commit = True
    reply = post_form(client, {"text": "maybe", "csrf_token": token})
    assert reply.status_code == 500
    assert "may or may not have been saved" in element(page_text(reply), "error")


# --------------------------------------------------------------------------- kept connections


def _write(client: Any, text: str) -> int:
    return int(client.post("/api/notes", base_url=SITE, json={"text": text}).status_code)


def test_a_worker_reuses_its_writer_connection_across_requests(db: FakeDB, client: Any) -> None:
    """Writes and reads of three requests each share one connection (one handshake)."""
    for i in range(1, 4):
        assert _write(client, f"note {i}") == 201
        assert client.get(f"/api/notes/{i}", base_url=SITE).get_json()["text"] == f"note {i}"
    assert db.writer_connections == 1


def test_a_connection_whose_commit_was_lost_is_never_used_again(db: FakeDB, client: Any) -> None:
    assert _write(client, "first") == 201
    db.lose_commit = True
    assert _write(client, "in doubt") == 500
    db.lose_commit = False
    assert _write(client, "after") == 201
    assert db.writer_connections == 2  # the one in doubt was closed; a new one took over
    assert [n["text"] for n in db.notes] == ["first", "after"]


def test_a_kept_connection_the_endpoint_cut_is_dropped_for_a_new_one(
    db: FakeDB, client: Any
) -> None:
    """A failover: the writer endpoint cuts every session. The kept connection fails its
    ping before any use, and the write goes through a new connection, once."""
    assert _write(client, "before") == 201
    db.generation += 1
    assert _write(client, "after the failover") == 201
    assert db.writer_connections == 2
    assert [n["text"] for n in db.notes] == ["before", "after the failover"]


def test_a_session_cut_after_a_commit_that_succeeded_still_answers_201_once(
    db: FakeDB, client: Any
) -> None:
    """The note is stored: the answer must say so (a 503 would tell the client nothing was
    written, and a retry would store it twice); the cut connection is not kept."""
    db.cut_after_commit = True
    assert _write(client, "stored") == 201
    db.cut_after_commit = False
    assert _write(client, "next") == 201
    assert db.writer_connections == 2
    assert [n["text"] for n in db.notes] == ["stored", "next"]


def test_a_connection_cut_between_its_ping_and_the_insert_is_a_retried_refusal(
    db: FakeDB, client: Any
) -> None:
    """Nothing was sent: the write is refused before COMMIT, tried again on a new connection,
    and stored once. (A scaling run in CI answered one write 503 "could not answer
    (OperationalError)": from this path or from a cut after COMMIT, both fixed.)"""
    assert _write(client, "first") == 201
    db.cut_before_cursor = True
    assert _write(client, "second") == 201
    assert [n["text"] for n in db.notes] == ["first", "second"]
    assert db.writer_connections == 2


# --------------------------------------------------------------------------- the API, unchanged


def test_the_api_still_takes_json_without_any_token(db: FakeDB, client: Any) -> None:
    reply = client.post("/api/notes", base_url=SITE, json={"text": "api"})
    assert reply.status_code == 201
    assert reply.get_json() == {"id": 1, "text": "api", "server": testbed_app.SERVER, "db": "web1"}
    got = client.get("/api/notes/1", base_url=SITE)
    assert got.status_code == 200
    assert got.get_json()["text"] == "api"
    listed = client.get("/api/notes?limit=5", base_url=SITE).get_json()["notes"]
    assert [n["id"] for n in listed] == [1]
    assert client.get("/api/notes/2", base_url=SITE).status_code == 404
    assert client.get("/api/notes?limit=0", base_url=SITE).status_code == 400


@pytest.mark.parametrize("limit", ["²", "٣", "５", " 5", "5 ", "+5", "0x5"])
def test_a_list_limit_that_is_not_plain_ascii_digits_is_400(
    db: FakeDB, client: Any, limit: str
) -> None:
    reply = client.get("/api/notes", base_url=SITE, query_string={"limit": limit})
    assert reply.status_code == 400
    assert reply.get_json()["error"] == "limit must be an integer from 1 to 100"


MALFORMED = 'malformed JSON: expected an object like {"text": "..."}'
REQUIRED = "field 'text' is required and must be a non-empty string"
JSON = "application/json"


@pytest.mark.parametrize(
    "body,content_type,message",
    [
        ("{not json", JSON, MALFORMED),
        ('["a"]', JSON, MALFORMED),
        ("{}", JSON, REQUIRED),
        ('{"text": ""}', JSON, REQUIRED),
        ('{"text": 42}', JSON, REQUIRED),
        ('{"text": "' + "x" * 1001 + '"}', JSON, "field 'text' is longer than 1000 characters"),
        (
            "text=form",
            "application/x-www-form-urlencoded",
            "expected a JSON body (Content-Type: application/json)",
        ),
    ],
    ids=["malformed", "not-an-object", "missing", "empty", "not-a-string", "oversized", "form"],
)
def test_the_api_refuses_bad_notes_as_before(
    db: FakeDB, client: Any, body: str, content_type: str, message: str
) -> None:
    reply = client.post("/api/notes", base_url=SITE, data=body, content_type=content_type)
    assert reply.status_code == 400
    assert reply.get_json() == {"error": message, "status": 400}
    assert db.notes == []


def test_the_api_answers_503_json_when_no_node_takes_writes(db: FakeDB, client: Any) -> None:
    db.down = {"port"}
    reply = client.post("/api/notes", base_url=SITE, json={"text": "x"})
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    assert reply.get_json() == {"error": testbed_app.NO_WRITER, "status": 503}


def test_a_note_waits_out_a_brief_gap_in_the_writer_and_is_stored_once(
    db: FakeDB, client: Any
) -> None:
    db.writer_gone_for = 2
    reply = client.post("/api/notes", base_url=SITE, json={"text": "patient"})
    assert reply.status_code == 201, reply.get_json()
    assert db.writer_connections == 3
    assert [n["text"] for n in db.notes] == ["patient"]


def test_a_note_gives_up_after_its_patience_with_503(db: FakeDB, client: Any) -> None:
    db.down = {"port"}
    started = time.monotonic()
    reply = client.post("/api/notes", base_url=SITE, json={"text": "x"})
    waited = time.monotonic() - started
    assert reply.status_code == 503
    assert db.writer_connections == 3  # at 0, 0.25 and 0.5 s; a fourth would start too late
    assert 0.45 < waited < 1.0
    assert db.notes == []


def test_the_api_answers_500_json_when_the_commit_was_lost(db: FakeDB, client: Any) -> None:
    db.lose_commit = True
    reply = client.post("/api/notes", base_url=SITE, json={"text": "x"})
    assert db.writer_connections == 1, "a commit whose outcome is unknown is never tried again"
    assert reply.status_code == 500
    assert reply.get_json() == {
        "error": "the database connection was lost during commit: "
        "the note may or may not have been saved",
        "status": 500,
    }


def test_the_database_health_check_is_unchanged(db: FakeDB, client: Any) -> None:
    reply = client.get("/health/database", base_url=SITE)
    assert reply.status_code == 200
    assert reply.get_json() == {"status": "ok", "server": testbed_app.SERVER, "database": "web1"}


def test_metrics_count_the_page_and_the_form_by_route(
    db: FakeDB, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    post_form(client, {"text": "x", "csrf_token": token_of(get(client))})
    text = client.get("/metrics", base_url=SITE).get_data(as_text=True)
    assert 'testbed_app_requests_total{method="GET",route="/",status="200"}' in text
    assert 'testbed_app_requests_total{method="POST",route="/notes",status="303"}' in text


# --------------------------------------------------------------------------- pure logic


@pytest.mark.parametrize(
    "writer,reader,behind",
    [
        ("0-1-10", "0-1-10", 0),
        ("0-1-10", "0-2-7", 3),  # another server id in the same domain: still comparable
        ("0-1-10,1-3-5", "0-1-10,1-3-2", 3),
        ("0-2-10", "", 10),  # a reader that has applied nothing
        ("0-1-10", "0-1-11", 0),  # read a moment later than the writer: not behind
        ("", "0-1-3", 0),
        ("0-1-10,\n1-1-4", "0-1-9,1-1-4", 1),
    ],
)
def test_transactions_behind_compares_gtid_sequence_numbers_per_domain(
    writer: str, reader: str, behind: int
) -> None:
    assert testbed_app.transactions_behind(writer, reader) == behind


def test_an_unreadable_gtid_position_makes_the_lag_unknown() -> None:
    look = testbed_app.Look
    assert testbed_app.lag_text(look("a", "garbage", []), look("b", "0-1-1", [])) == "unknown"
    assert testbed_app.lag_text(None, look("b", "0-1-1", [])) == "unknown"


@pytest.mark.parametrize(
    "origin,ok",
    [
        (None, True),
        ("https://www.foobar.com", True),
        ("https://foobar.com:443", True),
        ("https://www.foobar.com:8443", True),
        ("https://evil.example", False),
        ("https://foobar.com.evil.example", False),
        ("http://www.foobar.com", False),
        ("null", False),
        ("https://www.foobar.com:0", False),
        ("https://www.foobar.com:", False),
    ],
)
def test_the_origin_check(origin: str | None, ok: bool) -> None:
    assert testbed_app.origin_ok(origin, ("www.foobar.com", "foobar.com")) is ok


def test_tokens_depend_on_the_secret_and_the_nonce() -> None:
    nonce = "n" * 43
    token = testbed_app.csrf_token("secret", nonce)
    assert testbed_app.token_ok("secret", nonce, token)
    assert not testbed_app.token_ok("other secret", nonce, token)
    assert not testbed_app.token_ok("secret", "m" * 43, token)
    assert not testbed_app.token_ok("", nonce, testbed_app.csrf_token("", nonce))
    assert not testbed_app.token_ok("secret", "short", testbed_app.csrf_token("secret", "short"))
