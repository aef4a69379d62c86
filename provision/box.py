"""The docker "box": a Debian 12 image that boots systemd and sshd like a VM.

No image registry is reachable, so the image is built locally: debootstrap of
Debian 12 (the mirror is read from this machine's own apt sources), imported into
docker, then provision/box/Dockerfile adds what a Vagrant box has (vagrant user,
sudo, Vagrant's public insecure key). The image tag carries a hash of the recipe,
so it is rebuilt only when the recipe changes. The Dockerfile also installs the packages
every machine's first roles install (provision/layout.py), part of the recipe too.

Run ``python -m provision.box --help``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provision import PROJECT_ROOT, layout

BOX_DIR = PROJECT_ROOT / "provision" / "box"
SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "iptables",
)
IMAGE_REPO = "webinfra-testbed/box"
ROOTFS_REPO = "webinfra-testbed/rootfs"
VAGRANT_KEY_GLOBS = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant.pub",
)


class BoxError(RuntimeError):
    pass


def _say(message: str) -> None:
    print(f"box: {message}", flush=True)


def rootfs_recipe() -> str:
    return (
        f"debootstrap --variant=minbase --include={','.join(PACKAGES)} {SUITE}"
        " + security suite, upgraded"
    )


def recipe_files() -> list[Path]:
    return sorted(p for p in BOX_DIR.iterdir() if p.is_file())


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def rootfs_tag() -> str:
    return f"{ROOTFS_REPO}:{_digest(rootfs_recipe().encode())}"


def baked_packages() -> str:
    """The packages the Dockerfile installs into the box: every machine's first roles'."""
    return " ".join(layout.EVERY_HOST_PACKAGES)


def image_tag() -> str:
    """The tag of the box image for the current recipe (the Vagrantfile uses it)."""
    parts = [rootfs_recipe().encode(), baked_packages().encode()]
    for path in recipe_files():
        parts += [path.name.encode(), path.read_bytes()]
    return f"{IMAGE_REPO}:{_digest(*parts)}"


def apt_sources(sources_dir: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    """(URI, suite) of every `deb` source in apt's sources: deb822 `.sources` files, then
    one-line `sources.list` and `.list` files, in apt's order."""
    found: list[tuple[str, str]] = []
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        stanzas = re.split(r"\n\s*\n", path.read_text())
        for stanza in stanzas:
            fields: dict[str, list[str]] = {}
            for line in stanza.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith((" ", "\t", "#")):
                    fields[key.strip()] = value.split()
            enabled = fields.get("Enabled", ["yes"])[0].lower() != "no"
            if enabled and "deb" in fields.get("Types", ["deb"]):
                found += [(u, s) for u in fields.get("URIs", []) for s in fields.get("Suites", [])]
    lists = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            # Drop the "[opt=a opt=b]" block, which may hold spaces, before splitting.
            fields_ = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(fields_) >= 3 and fields_[0] == "deb":
                found.append((fields_[1], fields_[2]))
    return found


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt already uses (never a hard-coded host)."""
    candidates = [
        uri
        for uri, suite in apt_sources(sources_dir)
        if suite in (SUITE, "stable") and not uri.rstrip("/").endswith("-security")
    ]
    if not candidates:
        raise BoxError(
            f"no Debian {SUITE} mirror found in {sources_dir}/sources.list(.d); "
            "add one to apt's sources (debootstrap reads the same mirror)"
        )
    return candidates[0]


def security_mirror(sources_dir: Path = Path("/etc/apt")) -> str | None:
    """Where this machine's apt gets Debian's security updates for SUITE, if it does."""
    for uri, suite in apt_sources(sources_dir):
        if suite == f"{SUITE}-security":
            return uri
    return None


def vagrant_public_key() -> Path:
    for pattern in VAGRANT_KEY_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[-1])
    raise BoxError("Vagrant's keys/vagrant.pub not found: is vagrant installed?")


def _docker(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], text=True, **kwargs)  # type: ignore[call-overload]


def image_exists(tag: str) -> bool:
    return _docker("image", "inspect", tag, capture_output=True).returncode == 0


def build_rootfs(tag: str) -> None:
    if shutil.which("debootstrap") is None:
        raise BoxError("debootstrap is not installed (apt-get install debootstrap)")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="testbed-rootfs-", dir="/var/tmp") as tmp:
        target = Path(tmp) / "rootfs"
        _say(f"debootstrap Debian {SUITE} from the mirror in apt's sources (about a minute)...")
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(target),
            mirror,
        ]
        log = Path(tmp) / "debootstrap.log"
        with log.open("w") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise BoxError(f"debootstrap failed (exit {rc}):\n{tail}")
        add_security_updates(target, security_mirror())
        # Trim what a server image does not need; keeps the import small.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (target / sub).glob("*"):
                if p.is_file():
                    p.unlink()
        _say(f"importing the root file system as {tag}...")
        tar = subprocess.Popen(["tar", "-C", str(target), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(
            ["docker", "import", "-", tag], stdin=tar.stdout, capture_output=True, text=True
        )
        tar.wait()
        if tar.returncode != 0 or imp.returncode != 0:
            raise BoxError(f"docker import failed: {imp.stderr.strip()}")


def add_security_updates(target: Path, security: str | None) -> None:
    """Give the root file system the security suite this machine's apt uses, and install
    its updates: every machine starts patched, and each deploy's installs get the patched
    packages (lynis PKGS-7388). Without one in this machine's sources, the box goes
    without, and says so."""
    if security is None:
        _say(f"no {SUITE}-security source in this machine's apt sources: the box has none.")
        return
    with (target / "etc/apt/sources.list").open("a") as out:
        out.write(f"deb {security} {SUITE}-security main\n")
    _say(f"installing {SUITE}-security updates into the root file system...")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for args in (["apt-get", "update", "-q"], ["apt-get", "upgrade", "-y", "-q"]):
        res = subprocess.run(
            ["chroot", str(target), *args], capture_output=True, text=True, env=env, check=False
        )
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).splitlines()[-10:])
            raise BoxError(f"{' '.join(args)} in the root file system failed:\n{tail}")


def build(force: bool = False) -> str:
    """Make sure the box image for the current recipe exists; return its tag."""
    tag = image_tag()
    if image_exists(tag) and not force:
        _say(f"{tag} is up to date (recipe unchanged).")
        return tag
    started = time.monotonic()
    base = rootfs_tag()
    if force or not image_exists(base):
        build_rootfs(base)
    else:
        _say(f"reusing root file system {base}.")
    with tempfile.TemporaryDirectory(prefix="testbed-box-") as tmp:
        for path in recipe_files():
            shutil.copy(path, tmp)
        shutil.copy(vagrant_public_key(), Path(tmp) / "vagrant.pub")
        _say(f"building {tag}...")
        res = _docker(
            "build", "-q", "--build-arg", f"BASE={base}",
            "--build-arg", f"PACKAGES={baked_packages()}", "-t", tag, tmp, capture_output=True,
        )  # fmt: skip
        if res.returncode != 0:
            raise BoxError(f"docker build failed:\n{res.stderr.strip()}")
    _say(f"built {tag} in {time.monotonic() - started:.0f} s.")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m provision.box", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the recipe is unchanged"
    )
    parser.add_argument(
        "--tag", action="store_true", help="print the image tag for the current recipe and exit"
    )
    args = parser.parse_args(argv)
    if args.tag:
        print(image_tag())
        return 0
    try:
        build(force=args.force)
    except BoxError as exc:
        print(f"box: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
