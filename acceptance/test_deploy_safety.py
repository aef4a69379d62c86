"""A deploy step that fails halfway leaves the machine as it was, and says why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import testinfra

from acceptance.conftest import TOPOLOGY
from provision import engine
from provision.inventory import Endpoint
from provision.roles.common import SSHD_DROPIN

# Any host's sshd is deployed the same way; use a web host that does not hold the database
# primary (seed: web2), the least harmful place for a deploy step to go wrong.
HOST = next(h for h in TOPOLOGY.with_role("web") if not h.has_role("db-primary"))


@pytest.fixture
def remote(endpoints: dict[str, Endpoint]) -> Iterator[engine.Remote]:
    with engine.Remote(HOST, endpoints[HOST.name]) as r:
        yield r


def test_a_config_that_fails_validation_never_goes_live(
    remote: engine.Remote, machines: dict[str, testinfra.host.Host]
) -> None:
    machine = machines[HOST.name]
    before = machine.file(SSHD_DROPIN).sha256sum
    broken = engine.File(
        SSHD_DROPIN,
        "PermitRootLogin perhaps\n",
        mode="0600",
        validate="/usr/sbin/sshd -t -f {path}",
    )
    with pytest.raises(engine.StepError, match="failed validation"):
        broken.apply(remote)
    assert machine.file(SSHD_DROPIN).sha256sum == before
    assert not machine.file(SSHD_DROPIN + ".testbed-new").exists
    assert machine.service("ssh").is_running


def test_a_file_step_reports_changed_once_then_ok(remote: engine.Remote) -> None:
    path = "/etc/testbed-acceptance-probe"
    step = engine.File(path, "one\n")
    try:
        assert step.apply(remote).changed
        assert not step.apply(remote).changed
        assert engine.File(path, "two\n").apply(remote).changed
    finally:
        remote.run(f"rm -f {path}")
