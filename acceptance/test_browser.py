"""The site in a real browser: Debian's Chromium, headless, driven by Selenium.

The browser trusts the testbed CA the way a user who imported it would (an NSS database
made with certutil, where Chromium reads it), and maps the site's name to where this
machine reaches it with --host-resolver-rules; no flag ignores a certificate error, so
a certificate Chromium did not trust would stop at its error page and fail the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from acceptance.conftest import TOPOLOGY
from acceptance.site import SITE, SITE_CLIENT
from provision import STATE_DIR
from provision.testkit import BrowserUnavailable, chromium

URL = f"https://{SITE}:{SITE_CLIENT.entry.https}/"
WEB_HOSTS = {h.name for h in TOPOLOGY.with_role("web")}
DB_HOSTS = {h.name for h in TOPOLOGY.in_tier("db")}
SCREENSHOT = STATE_DIR / "browser" / "front-page.png"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        with chromium(SITE_CLIENT, tmp_path_factory.mktemp("chromium-home")) as driver:
            yield driver
    except BrowserUnavailable as exc:
        pytest.fail(f"cannot run Chromium: {exc}", pytrace=False)


def _by_id(browser: Any, element_id: str) -> Any:
    return browser.find_element(By.ID, element_id)


def _submit_and_wait_for_the_next_page(browser: Any) -> None:
    """Click the form's button and wait until a new document has loaded.

    The old document is marked with a property of its window; a navigation gives the
    page a new window, without it. (Selenium's staleness_of asks Chromium about the old
    element, and while the page is being replaced Chromium sometimes answers with an
    "unhandled inspector error" instead of "stale": a question asked mid-navigation.)
    """
    browser.execute_script("window.testbedOldPage = true")
    _by_id(browser, "submit").click()
    WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script(
            "return !window.testbedOldPage && document.readyState === 'complete'"
        ),
        "the form's submission did not load a new page within 15 s",
    )


def test_the_page_loads_over_http2_with_a_certificate_the_browser_trusts(browser: Any) -> None:
    browser.get(URL)
    # An untrusted certificate ends on Chromium's "Privacy error" page, not the site's.
    assert browser.title == f"{SITE} · notes", f"{URL}: {browser.title!r}"
    assert browser.execute_script("return window.isSecureContext") is True
    protocol = browser.execute_script(
        "return performance.getEntriesByType('navigation')[0].nextHopProtocol"
    )
    assert protocol == "h2"
    assert _by_id(browser, "server").text in WEB_HOSTS
    assert _by_id(browser, "writer").text in DB_HOSTS


def test_a_note_posted_through_the_form_is_listed_with_the_server_that_took_it(
    browser: Any,
) -> None:
    browser.get(URL)
    text = f"from the browser <b>{uuid.uuid4().hex[:8]}</b>"
    _by_id(browser, "text").send_keys(text)
    _submit_and_wait_for_the_next_page(browser)
    assert "was saved" in _by_id(browser, "added").text
    notes = browser.find_elements(By.CSS_SELECTOR, "#notes li.note")
    mine = [n for n in notes if n.find_element(By.CSS_SELECTOR, ".note-text").text == text]
    assert mine, f"{text!r} not among {[n.text for n in notes][:5]}"
    # Shown as text, not markup: the <b> the note holds is not an element of the page.
    assert not mine[0].find_elements(By.TAG_NAME, "b")
    assert mine[0].find_element(By.CSS_SELECTOR, ".note-server").text in WEB_HOSTS
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))


def test_a_refused_note_is_explained_on_the_page_and_kept_in_the_box(browser: Any) -> None:
    browser.get(URL)
    too_long = "x" * 1001
    box = _by_id(browser, "text")
    browser.execute_script("arguments[0].value = arguments[1]", box, too_long)
    _submit_and_wait_for_the_next_page(browser)
    assert "1000" in _by_id(browser, "error").text
    assert _by_id(browser, "text").get_attribute("value") == too_long


def test_the_csrf_cookie_is_secure_httponly_and_strict(browser: Any) -> None:
    browser.get(URL)
    cookie = browser.get_cookie("__Host-csrf")
    assert cookie is not None
    assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Strict")
