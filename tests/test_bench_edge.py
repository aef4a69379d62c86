"""How bench/edge.py reads wrk's report and builds its commands (provision/testkit.py).
The report is a real one: Debian's wrk 4.1, run on this machine against a local server."""

from __future__ import annotations

import pytest

from provision import testkit as edge

REPORT = """Running 2s test @ http://127.0.0.1:18080/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.68ms   34.02ms 420.05ms   96.70%
    Req/Sec   453.67    195.38     0.89k    60.00%
  Latency Distribution
     50%    6.84ms
     75%    9.56ms
     90%   12.75ms
     99%  199.42ms
  1810 requests in 2.00s, 2.76MB read
Requests/sec:    903.80
Transfer/sec:      1.38MB
"""


def test_a_wrk_report_gives_requests_per_second_the_median_and_no_errors() -> None:
    got = edge.parse_wrk(REPORT)
    assert (got.rps, got.p50_ms, got.non_2xx, got.socket_errors) == (903.80, 6.84, 0, 0)


def test_errors_and_other_latency_units_are_read() -> None:
    text = REPORT.replace("     50%    6.84ms", "     50%  812.00us").replace(
        "Requests/sec:",
        "  Socket errors: connect 1, read 2, write 0, timeout 4\n"
        "  Non-2xx or 3xx responses: 17\nRequests/sec:",
    )
    got = edge.parse_wrk(text)
    assert (got.p50_ms, got.non_2xx, got.socket_errors) == (pytest.approx(0.812), 17, 7)


def test_something_that_is_not_a_wrk_report_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a wrk report"):
        edge.parse_wrk("wrk: command not found")


def test_the_write_route_posts_json_through_a_script_and_the_others_get() -> None:
    write = edge.wrk_command("https://192.168.56.10:443/api/notes", "www.foobar.com", "write", 10)
    assert "-s /tmp/bench-edge-post.lua" in write and 'wrk.method = "POST"' in write
    page = edge.wrk_command("https://192.168.56.10:443/", "www.foobar.com", "page", 10)
    assert " -s " not in page
    assert page.endswith("-H 'Host: www.foobar.com' https://192.168.56.10:443/")
    assert "-t2 -c16 -d10s" in page
