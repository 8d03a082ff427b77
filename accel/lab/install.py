"""What a lab puts on the node before its pods run anything: the agent package as one zipapp,
the python that runs it, and the proxy's user and group (the sidecar agent runs as them)."""

from __future__ import annotations

import grp
import pwd
import zipapp
from pathlib import Path

from .. import process
from ..constants import PROXY_GID, PROXY_UID, PROXY_USER

AGENT = Path(__file__).with_name("agent")  # the agents' package, shipped to each lab as one zipapp
PYTHON = "/usr/bin/python3"  # Debian's: the proxy uid can run it, and it cannot read a venv under /root


def build_agent(target: Path) -> Path:
    """The agent package as one zipapp at `target`, readable by every uid (the proxy's runs it).
    `python3 -I -S target ROLE ...` runs it from the archive: -I keeps the environment and the
    working directory off sys.path, -S site-packages, so it imports only itself and the stdlib."""
    zipapp.create_archive(
        AGENT.parent,
        target,
        main=f"{AGENT.name}.__main__:main",
        filter=lambda path: path.parts[0] == AGENT.name and path.suffix == ".py",
    )
    target.chmod(0o644)
    return target


def ensure_proxy_user():
    """The sidecar's identity, as in Istio's images: user and group istio-proxy, 1337."""
    try:
        grp.getgrgid(PROXY_GID)
    except KeyError:
        process.run(["groupadd", "--system", "--gid", str(PROXY_GID), PROXY_USER], check=True)
    try:
        pwd.getpwuid(PROXY_UID)
    except KeyError:
        process.run(
            [
                "useradd",
                "--system",
                "--uid",
                str(PROXY_UID),
                "--gid",
                str(PROXY_GID),
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PROXY_USER,
            ],
            check=True,
        )
