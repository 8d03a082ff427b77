"""A CNI runtime for tests: runs a network configuration list the way libcni does (libcni/api.go),
so that accel-cni is proven against the protocol a real runtime speaks, with Debian's real plugins
before it.

- ADD runs the plugins in order; each gets its object with the list's name and cniVersion and,
  after the first, prevResult (the previous plugin's result); the last result is cached.
- CHECK runs them in order, DEL in reverse, both with the cached result as prevResult.
- Each plugin is found in CNI_PATH by its type and gets CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
  CNI_IFNAME, CNI_ARGS and CNI_PATH; its stdout is its result or its error object.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from accel import process


class PluginFailed(AssertionError):
    def __init__(self, plugin: str, command: str, status: int, stdout: str, stderr: str):
        self.plugin, self.command, self.status = plugin, command, status
        self.stdout, self.stderr = stdout, stderr
        try:
            self.error = json.loads(stdout)
        except ValueError:
            self.error = None
        super().__init__(f"{plugin} {command} exited {status}: {stdout.strip() or stderr.strip()[-500:]}")


@dataclass
class Chain:
    conflist: dict
    cni_path: Path  # the bin directory
    cache: Path  # where results are cached between ADD and DEL/CHECK
    netns: str | None = None  # where the plugins run (the "node"): bridge makes its bridge there

    def add(self, container: str, netns: str, args: str = "", ifname: str = "eth0") -> dict:
        result = None
        for plugin in self.conflist["plugins"]:
            result = self._exec(plugin, "ADD", container, netns, args, ifname, result)
        self._cached(container, ifname).write_text(json.dumps(result))
        return result

    def check(self, container: str, netns: str, args: str = "", ifname: str = "eth0") -> None:
        cached = json.loads(self._cached(container, ifname).read_text())
        for plugin in self.conflist["plugins"]:
            self._exec(plugin, "CHECK", container, netns, args, ifname, cached)

    def delete(self, container: str, netns: str, args: str = "", ifname: str = "eth0") -> None:
        path = self._cached(container, ifname)
        cached = json.loads(path.read_text()) if path.exists() else None
        for plugin in reversed(self.conflist["plugins"]):
            self._exec(plugin, "DEL", container, netns, args, ifname, cached)
        path.unlink(missing_ok=True)

    def _cached(self, container: str, ifname: str) -> Path:
        return self.cache / f"{self.conflist['name']}-{container}-{ifname}"

    def _exec(
        self, plugin: dict, command: str, container: str, netns: str, args: str, ifname: str, previous: dict | None
    ) -> dict | None:
        config = {**plugin, "name": self.conflist["name"], "cniVersion": self.conflist["cniVersion"]}
        if previous is not None:
            config["prevResult"] = previous
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": args,
            "CNI_PATH": str(self.cni_path),
        }
        result = process.run(
            [str(self.cni_path / plugin["type"])], input=json.dumps(config), env=env, netns=self.netns, timeout=120
        )
        if result.returncode != 0:
            raise PluginFailed(plugin["type"], command, result.returncode, result.stdout, result.stderr)
        if command != "ADD":
            assert result.stdout.strip() == "", f"{plugin['type']} {command} printed {result.stdout!r}"
            return previous
        return json.loads(result.stdout)
