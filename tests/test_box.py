"""provision/box.py: the Debian mirror read from apt's sources, and the image tag."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from provision import box
from provision.box import BoxError, debian_mirror

MIRROR = "http://mirror.example/debian"
SECURITY = "http://mirror.example/debian-security"

MAIN_STANZA = f"""\
Types: deb
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

SECURITY_STANZA = f"""\
Types: deb
URIs: {SECURITY}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def deb822(tmp_path: Path, text: str, name: str = "debian.sources") -> Path:
    (tmp_path / "sources.list.d").mkdir(exist_ok=True)
    (tmp_path / "sources.list.d" / name).write_text(text)
    return tmp_path


def one_line(tmp_path: Path, text: str) -> Path:
    (tmp_path / "sources.list").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(MAIN_STANZA + "\n" + SECURITY_STANZA, id="main-first"),
        pytest.param(SECURITY_STANZA + "\n" + MAIN_STANZA, id="security-first"),
    ],
)
def test_deb822_sources_give_the_main_mirror_not_security(tmp_path: Path, text: str) -> None:
    assert debian_mirror(deb822(tmp_path, text)) == MIRROR


def test_deb822_stanza_for_stable_is_accepted(tmp_path: Path) -> None:
    text = MAIN_STANZA.replace("bookworm bookworm-updates", "stable")
    assert debian_mirror(deb822(tmp_path, text)) == MIRROR


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            f"deb {MIRROR} bookworm main\ndeb {SECURITY} bookworm-security main\n", id="plain"
        ),
        pytest.param(
            f"# a comment\ndeb-src {MIRROR} bookworm main\ndeb {MIRROR} bookworm main contrib\n",
            id="with-comment-and-deb-src",
        ),
        pytest.param(
            f"deb [signed-by=/usr/share/keyrings/debian.gpg] {MIRROR} bookworm main\n",
            id="with-one-option",
        ),
    ],
)
def test_one_line_sources_list_gives_the_main_mirror(tmp_path: Path, text: str) -> None:
    assert debian_mirror(one_line(tmp_path, text)) == MIRROR


def test_one_line_list_in_sources_list_d_is_read(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.list").write_text(f"deb {MIRROR} bookworm main\n")
    assert debian_mirror(tmp_path) == MIRROR


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: d, id="no-sources-at-all"),
        pytest.param(lambda d: one_line(d, ""), id="empty-sources-list"),
        pytest.param(
            lambda d: one_line(d, f"deb {SECURITY} bookworm-security main\n"), id="security-only"
        ),
        pytest.param(lambda d: deb822(d, SECURITY_STANZA), id="deb822-security-only"),
        pytest.param(lambda d: one_line(d, f"deb {MIRROR} trixie main\n"), id="other-release-only"),
    ],
)
def test_no_usable_bookworm_source_is_an_error_naming_the_folder(
    tmp_path: Path, make: Callable[[Path], object]
) -> None:
    make(tmp_path)
    with pytest.raises(BoxError, match=re.escape(str(tmp_path))):
        debian_mirror(tmp_path)


def test_one_line_source_with_several_options_gives_the_mirror(tmp_path: Path) -> None:
    text = f"deb [arch=amd64 signed-by=/usr/share/keyrings/debian.gpg] {MIRROR} bookworm main\n"
    assert debian_mirror(one_line(tmp_path, text)) == MIRROR


# --------------------------------------------------------------------------- image tag


def test_image_tag_changes_when_the_recipe_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = box.image_tag()
    monkeypatch.setattr(box, "PACKAGES", [*box.PACKAGES, "one-more-package"])
    assert box.image_tag() != shipped


def test_image_tag_changes_when_a_role_installs_another_package_on_every_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from provision import layout

    shipped = box.image_tag()
    monkeypatch.setattr(layout, "EVERY_HOST_PACKAGES", (*layout.EVERY_HOST_PACKAGES, "nmap"))
    assert box.image_tag() != shipped


def test_image_tag_names_the_box_repository() -> None:
    assert box.image_tag().startswith("webinfra-testbed/box:")


def test_image_tag_ends_in_a_short_hex_digest() -> None:
    assert re.fullmatch(r"webinfra-testbed/box:[0-9a-f]{12}", box.image_tag())


def test_rootfs_tag_names_the_rootfs_repository() -> None:
    assert box.rootfs_tag().startswith("webinfra-testbed/rootfs:")


# --------------------------------------------------------------------------- security suite


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: deb822(d, MAIN_STANZA + "\n" + SECURITY_STANZA), id="deb822"),
        pytest.param(
            lambda d: one_line(
                d, f"deb {MIRROR} bookworm main\ndeb {SECURITY} bookworm-security main\n"
            ),
            id="one-line",
        ),
    ],
)
def test_the_security_suite_is_read_from_apt_sources(
    tmp_path: Path, make: Callable[[Path], object]
) -> None:
    make(tmp_path)
    assert box.security_mirror(tmp_path) == SECURITY
    assert debian_mirror(tmp_path) == MIRROR


def test_no_security_suite_reads_as_none(tmp_path: Path) -> None:
    assert box.security_mirror(deb822(tmp_path, MAIN_STANZA)) is None


def test_a_disabled_deb822_stanza_type_is_not_a_source(tmp_path: Path) -> None:
    text = MAIN_STANZA + "\n" + SECURITY_STANZA.replace("Types: deb", "Types: deb-src")
    assert box.security_mirror(deb822(tmp_path, text)) is None
