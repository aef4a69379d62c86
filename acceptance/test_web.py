"""The app through the load balancer: it works, and hostile input is refused cleanly.

Every refusal is a 4xx (never a 5xx), stores nothing, and leaves the site answering.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from testinfra.host import Host

from acceptance.conftest import TOPOLOGY
from acceptance.site import SITE, raw_exchange, request, tls_socket
from provision.ops.scale import admin_command

WEBS = {h.name for h in TOPOLOGY.with_role("web")}
JSON = {"Content-Type": "application/json"}


def _newest_id() -> int:
    reply = request("GET", "/api/notes?limit=1")
    assert reply.status == 200
    notes = json.loads(reply.body)["notes"]
    return int(notes[0]["id"]) if notes else 0


def _post(text: object) -> int:
    reply = request("POST", "/api/notes", json.dumps({"text": text}), JSON)
    assert reply.status == 201, reply.body
    return int(json.loads(reply.body)["id"])


@pytest.fixture
def nothing_stored_and_still_serving() -> Iterator[None]:
    """Around a refusal: no note was stored by it, and the site still works after it."""
    before = _newest_id()
    yield
    assert _newest_id() == before, "a refused request stored a note"
    assert request("GET", "/health").status == 200
    new = _post("still serving")
    assert json.loads(request("GET", f"/api/notes/{new}").body)["text"] == "still serving"


def test_the_api_still_answers_when_no_server_passes_the_database_check(
    machines: dict[str, Host],
) -> None:
    # A check that is only slow (a busy machine) must not cost requests: with the whole
    # `api` pool out (maintenance, on every balancer), the API goes to the web servers.
    def set_api(state: str) -> None:
        for lb in TOPOLOGY.with_role("lb"):
            for web in sorted(WEBS):
                machines[lb.name].check_output(admin_command(f"set server api/{web} state {state}"))

    set_api("maint")
    try:
        reply = request("GET", "/api/notes?limit=1")
        new = _post("no api pool")
    finally:
        set_api("ready")
    assert reply.status == 200, reply.body
    assert reply.header("X-Served-By") in WEBS
    assert json.loads(request("GET", f"/api/notes/{new}").body)["text"] == "no api pool"


def test_the_home_page_names_the_server_that_answered() -> None:
    reply = request("GET", "/")
    assert reply.status == 200
    assert reply.header("content-type").startswith("text/html")
    assert f"<b id=server>{reply.header('x-served-by')}</b>" in reply.body.decode()


def test_health_is_200_and_says_ok_on_every_web_server() -> None:
    """/health proves nginx and the app answer; it does not ask the database (a database
    fault must not take every web server out of the pool: test_drills.py shows it)."""
    for _ in WEBS:
        reply = request("GET", "/health")
        assert reply.status == 200
        assert json.loads(reply.body)["status"] == "ok"


def test_a_posted_note_is_201_with_its_id_and_readable_back() -> None:
    reply = request("POST", "/api/notes", json.dumps({"text": "hello"}), JSON)
    assert reply.status == 201
    note = json.loads(reply.body)
    got = request("GET", f"/api/notes/{note['id']}")
    assert got.status == 200
    assert json.loads(got.body)["text"] == "hello"
    listed = json.loads(request("GET", "/api/notes?limit=5").body)["notes"]
    assert note["id"] in [n["id"] for n in listed]


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
def test_a_body_over_the_limit_is_413() -> None:
    body = json.dumps({"text": "x" * (17 * 1024)})
    reply = request("POST", "/api/notes", body, JSON)
    assert reply.status == 413


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
@pytest.mark.parametrize(
    "body,headers",
    [
        ("{not json", JSON),
        ('["a", "list"]', JSON),
        ("{}", JSON),
        ('{"text": ""}', JSON),
        ('{"text": 42}', JSON),
        (json.dumps({"text": "x" * 1001}), JSON),
        ('{"text": "form"}', {"Content-Type": "application/x-www-form-urlencoded"}),
    ],
    ids=["malformed", "not-an-object", "missing", "empty", "not-a-string", "oversized", "form"],
)
def test_a_bad_note_is_400_with_a_json_error(body: str, headers: dict[str, str]) -> None:
    reply = request("POST", "/api/notes", body, headers)
    assert reply.status == 400
    assert reply.header("content-type") == "application/json"
    assert json.loads(reply.body)["error"]


@pytest.mark.parametrize(
    "text",
    [
        "'; DROP TABLE notes; --",
        "1' OR '1'='1",
        'x"); DELETE FROM notes WHERE ("1"="1',
        "Robert'); SELECT SLEEP(5);--",
    ],
)
def test_sql_injection_strings_are_stored_verbatim_and_never_run(text: str) -> None:
    started = time.monotonic()
    note = _post(text)
    assert time.monotonic() - started < 3  # SLEEP(5) was not executed
    assert json.loads(request("GET", f"/api/notes/{note}").body)["text"] == text
    assert _newest_id() >= note  # the table is still there


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
@pytest.mark.parametrize("path", ["/nope", "/api/notes/abc", "/api/notes/999999999"])
def test_an_unknown_path_or_note_is_404(path: str) -> None:
    assert request("GET", path).status == 404


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
def test_a_path_climbing_above_the_root_is_400() -> None:
    assert request("GET", "/../../etc/passwd").status == 400


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
@pytest.mark.parametrize(
    "limit",
    # Percent-encoded "²" and "٣": digits to str.isdigit(), not to a client's number.
    ["0", "101", "-1", "ten", "1e3", "%C2%B2", "%D9%A3", "%205", "5%00"],
    ids=["0", "101", "-1", "ten", "1e3", "superscript-2", "arabic-3", "space-5", "nul"],
)
def test_a_bad_list_limit_is_400(limit: str) -> None:
    assert request("GET", f"/api/notes?limit={limit}").status == 400


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
def test_a_chunked_request_body_is_refused() -> None:
    payload = (
        b"POST /api/notes HTTP/1.1\r\n"
        + f"Host: {SITE}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        + b"Connection: close\r\n\r\n14\r\n"
        + b'{"text": "chunked!"}\r\n0\r\n\r\n'
    )
    assert raw_exchange(payload).startswith(b"HTTP/1.1 400")


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
def test_a_request_with_both_content_length_and_transfer_encoding_is_refused() -> None:
    body = b'{"text": "smuggled"}'
    payload = (
        b"POST /api/notes HTTP/1.1\r\n"
        + f"Host: {SITE}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n"
        + b"Connection: close\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    answer = raw_exchange(payload)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_client_sending_its_request_byte_by_byte_is_cut_off(part: str) -> None:
    sock = tls_socket()
    started = time.monotonic()
    closed_after = None
    start = f"GET / HTTP/1.1\r\nHost: {SITE}\r\n"
    if part == "body":  # complete headers, then a body that never quite arrives
        start = (
            f"POST /api/notes HTTP/1.1\r\nHost: {SITE}\r\nContent-Type: application/json\r\n"
            'Content-Length: 200\r\n\r\n{"text": "'
        )
    try:
        sock.sendall(start.encode())
        sock.settimeout(1)
        for _ in range(20):  # 20 s of trickling, well past `timeout http-request 5s`
            try:
                sock.sendall(b"X")
                data = sock.recv(4096)
                if data == b"" or b"408" in data:
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (OSError, ConnectionError):
                closed_after = time.monotonic() - started
                break
    finally:
        sock.close()
    assert closed_after is not None, "the server kept a trickling client for 20 s"
    assert closed_after < 12


@pytest.mark.usefixtures("nothing_stored_and_still_serving")
@pytest.mark.parametrize("host", ["evil.example", "www.foobar.com.evil.example", ""])
def test_a_wrong_host_header_on_https_is_421(host: str) -> None:
    reply = request("GET", "/", host=host)
    assert reply.status == 421
