"""Everything a rule backend does to a pod goes through a Runner: the commands it runs (iptables'
tools, `ip` for TPROXY's routes), its libnftables calls, and the one thing it asks about the pod
(whether another user namespace owns it). The default does them for real; unit tests hand a
backend a fake that records what it was asked to do and answers as scripted.
"""

from __future__ import annotations

import os
import subprocess

from .. import process
from .. import userns as user_namespaces
from . import libnft


class Runner:
    def run(
        self,
        argv: list[str],
        *,
        input: str | None = None,
        netns: str | None = None,
        userns: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """process.run(): in `netns`, and with `userns` in the user namespace owning it; `env`
        adds to accel's environment. The result comes back whatever the exit status."""
        return process.run(argv, input=input, netns=netns, userns=userns, env={**os.environ, **env} if env else None)

    def nft(self, netns: str, commands: str, json_output: bool = False) -> str:
        """nft commands through libnftables in `netns`; raises BackendError if they fail."""
        return libnft.nft(netns, commands, json_output=json_output)

    def owned_by_other(self, netns: str) -> bool:
        """Whether a user namespace other than accel's owns `netns` (a pod with hostUsers: false)."""
        return user_namespaces.owned_by_other(netns)
