"""Installing accel-cni on a node: the executable in the runtime's plugin directory, the object in
the node's network configuration, and the kubeconfig the plugin reads pods with.

The executable is either a copy of this accel's `accel-cni` console script (its shebang names this
accel's Python, so it runs on this host), or, for accel in a DaemonSet's container, a small sh shim
that runs accel-cni inside that container's mount namespace. The executable is in place before the
configuration names it, and is taken out after: a runtime never meets an accel-cni it cannot run.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import constants as c
from . import config, conflist

EXECUTABLE = c.CNI_PLUGIN_TYPE
# The shim's second line: how uninstall (and a later install) knows the file is accel's.
SHIM_MARKER = "# accel-cni shim: written by `accel cni install --enter-pid-file`, removed by `accel cni uninstall`"
# What pip writes into every console script for this entry point: a copy made by another accel is ours too.
CONSOLE_SCRIPT_IMPORT = b"from accel.cni.plugin import main"
EXECUTABLE_MODE = 0o755
CNI_TRY_AGAIN_LATER = 11  # the CNI spec's error code for a transient condition: the runtime retries

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
ENV_HOST, ENV_PORT = "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"
KUBECONFIG_NAME = "accel-cni"  # the cluster, user and context in the kubeconfig


class InstallError(RuntimeError):
    """Something install or uninstall cannot do; what it had done in that call is undone."""


class KubeconfigError(ValueError):
    """A kubeconfig input missing or wrong; field is which (host, port, ca_file, token_file)."""

    def __init__(self, field: str, reason: str):
        self.field = field
        super().__init__(reason)


@dataclass(frozen=True)
class ExecutableChange:
    action: str  # install: copied, written, updated, unchanged; uninstall: removed, absent, left
    path: Path
    kind: str | None = None  # copy (of the console script) or shim; None for a file not accel's
    reason: str = ""  # left: why

    def as_json(self) -> dict:
        return {"action": self.action, "path": str(self.path), "kind": self.kind, "reason": self.reason or None}


@dataclass(frozen=True)
class Installed:
    executable: ExecutableChange
    conflist: conflist.Change
    warnings: tuple[str, ...] = ()  # the plugin object's (its "capture")

    @property
    def changed(self) -> bool:
        return self.executable.action != "unchanged" or self.conflist.action != "unchanged"

    def as_json(self) -> dict:
        return {
            "changed": self.changed,
            "executable": self.executable.as_json(),
            "conflist": self.conflist.as_json(),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Uninstalled:
    conflists: tuple[conflist.Change, ...]
    executable: ExecutableChange

    @property
    def changed(self) -> bool:
        return bool(self.conflists) or self.executable.action == "removed"

    def as_json(self) -> dict:
        return {
            "changed": self.changed,
            "conflists": [change.as_json() for change in self.conflists],
            "executable": self.executable.as_json(),
        }


def console_script() -> Path:
    """This accel's accel-cni, made by pip next to the venv's python (not resolved: a venv's python
    is a symlink to the system's, whose directory has no accel-cni)."""
    return Path(sys.executable).parent / EXECUTABLE


def shim(enter_pid_file: str, executable: Path | None = None) -> bytes:
    """A POSIX sh script that runs accel-cni (`executable`, as the agent's container sees it; this
    accel's by default) in the mount namespace of the process whose PID is in enter_pid_file (the
    agent's container, with hostPID so the PID is the node's). A PID that names no process, or one
    whose filesystem has no such executable (a stale file, a PID reused), counts as no agent."""
    executable = executable or console_script()
    if not enter_pid_file.startswith("/"):
        raise ValueError(f"the PID file must be an absolute path (got {enter_pid_file!r})")
    if "\n" in enter_pid_file or "\0" in enter_pid_file:
        raise ValueError(f"not a file name (got {enter_pid_file!r})")
    error = json.dumps(
        {
            "cniVersion": "1.0.0",
            "code": CNI_TRY_AGAIN_LATER,
            "msg": f"accel-cni: the accel agent is not running on this node (no live PID in "
            f"{enter_pid_file}): try again later",
        },
        separators=(",", ":"),
    )
    return f"""#!/bin/sh
{SHIM_MARKER}
# Runs accel-cni inside the accel agent's container (its mount namespace), where accel is installed.
pid_file={shlex.quote(enter_pid_file)}
pid=$(cat "$pid_file" 2>/dev/null | tr -d '[:space:]')
case "$pid" in
  ''|*[!0-9]*) pid= ;;
esac
if [ -z "$pid" ] || [ ! -x "/proc/$pid/root"{shlex.quote(str(executable))} ]; then
  # A pod torn down while the agent is away is not held up: the agent's next `accel up` forgets
  # pods whose namespace is gone. Any other command fails so that the runtime tries again, and no
  # pod starts uncaptured.
  if [ "$CNI_COMMAND" = DEL ]; then
    exit 0
  fi
  printf '%s\\n' {shlex.quote(error)}
  exit 1
fi
exec nsenter --target "$pid" --mount -- {shlex.quote(str(executable))}
""".encode()


def kind_of(data: bytes) -> str | None:
    """copy, shim, or None for a file that is not accel's, by its content."""
    lines = data.split(b"\n", 2)
    if len(lines) > 1 and lines[1] == SHIM_MARKER.encode():
        return "shim"
    if data.startswith(b"#!") and CONSOLE_SCRIPT_IMPORT in data.splitlines():
        return "copy"
    return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return b""  # not accel's
    except OSError as error:
        raise InstallError(f"cannot read {path}: {error.strerror or error}") from None


def _wanted_executable(enter_pid_file: str | None) -> tuple[bytes, str]:
    if enter_pid_file is not None:
        return shim(enter_pid_file), "shim"
    source = console_script()
    try:
        data = source.read_bytes()
    except OSError:
        raise InstallError(
            f"no accel-cni console script at {source}: reinstall accel (pip install) so that "
            "it is made, or give --enter-pid-file"
        ) from None
    if kind_of(data) != "copy":
        raise InstallError(f"{source} is not accel's accel-cni console script")
    return data, "copy"


def install(
    conf_dir: Path | str, bin_dir: Path | str, plugin_object: Mapping, enter_pid_file: str | None = None
) -> Installed:
    """Put accel-cni into the node: bin_dir/accel-cni, then its object in the node's network in
    conf_dir. Idempotent: what is already as wanted is not written. If the configuration cannot be
    changed, the executable is put back as it was. ConfigError: plugin_object is not valid."""
    conf_dir, bin_dir = Path(conf_dir), Path(bin_dir)
    parsed = config.parse(plugin_object)
    if conflist.CONVERTED_FROM in plugin_object:
        raise config.ConfigError(
            conflist.CONVERTED_FROM, "accel cni install sets it when it makes a .conf into a conflist; leave it out"
        )
    if not bin_dir.is_dir():
        raise InstallError(f"{bin_dir}: no such directory")
    plan = conflist.plan_insert(conf_dir, plugin_object)  # refuses before the executable is touched
    data, kind = _wanted_executable(enter_pid_file)
    target = bin_dir / EXECUTABLE
    before = _read(target)
    if before is not None and before != data and kind_of(before) is None:
        raise InstallError(f"{target} exists and is not accel's: left alone; remove it, or give another --bin-dir")
    if before == data:
        executable = ExecutableChange("unchanged", target, kind)
    else:
        conflist.write_atomically(target, data, EXECUTABLE_MODE)
        action = "updated" if before is not None else ("written" if kind == "shim" else "copied")
        executable = ExecutableChange(action, target, kind)
    try:
        change = plan.apply()
    except BaseException:
        _put_back(target, before, executable.action)
        raise
    return Installed(executable, change, parsed.warnings)


def _put_back(target: Path, before: bytes | None, action: str) -> None:
    if action == "unchanged":
        return
    try:
        if before is None:
            target.unlink(missing_ok=True)
        else:
            conflist.write_atomically(target, before, EXECUTABLE_MODE)
    except OSError:
        pass  # the error being raised says more than this one would


def uninstall(conf_dir: Path | str, bin_dir: Path | str) -> Uninstalled:
    """Take accel-cni out: its objects from every file in conf_dir, then bin_dir/accel-cni if it is
    accel's (a file of that name that is not is left, and said so). Nothing there is not an error."""
    conf_dir, bin_dir = Path(conf_dir), Path(bin_dir)
    changes = tuple(conflist.remove(conf_dir))
    target = bin_dir / EXECUTABLE
    data = _read(target)
    if data is None:
        return Uninstalled(changes, ExecutableChange("absent", target))
    kind = kind_of(data)
    if kind is None:
        return Uninstalled(
            changes, ExecutableChange("left", target, None, "not accel's (neither its console script nor its shim)")
        )
    target.unlink()
    return Uninstalled(changes, ExecutableChange("removed", target, kind))


def write_kubeconfig(
    path: Path | str,
    host: str | None = None,
    port: int | str | None = None,
    ca_file: str | None = None,
    token_file: str | None = None,
) -> tuple[str, dict]:
    """Write a kubeconfig for the plugin to reach the API server: the server, the cluster's CA file,
    and the service account's token *file* (a projected token rotates; the client reads the file
    each time the plugin runs). Inputs not given come from the pod's environment. Returns the
    action (written, unchanged) and the document."""
    path = Path(path)
    host = host if host is not None else _from_env(ENV_HOST, "host")
    port = port if port is not None else _from_env(ENV_PORT, "port")
    server = f"https://{_host(host)}:{_port(port)}"
    ca_file = _existing(ca_file, SERVICE_ACCOUNT / "ca.crt", "ca_file")
    token_file = _existing(token_file, SERVICE_ACCOUNT / "token", "token_file")
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": KUBECONFIG_NAME, "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": KUBECONFIG_NAME, "user": {"tokenFile": token_file}}],
        "contexts": [{"name": KUBECONFIG_NAME, "context": {"cluster": KUBECONFIG_NAME, "user": KUBECONFIG_NAME}}],
        "current-context": KUBECONFIG_NAME,
    }
    data = conflist.dumps(document)  # JSON is YAML: no YAML library needed to write or read it
    try:
        current = path.read_bytes()
        unchanged = current == data and (path.stat().st_mode & 0o7777) == 0o600
    except OSError:
        unchanged = False
    if not unchanged:
        conflist.write_atomically(path, data, 0o600)
    return ("unchanged" if unchanged else "written"), document


def _from_env(name: str, field: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise KubeconfigError(
            field, f"${name} is not set (it is in every pod; outside one, say where the API server is)"
        )
    return value


def _host(host: str) -> str:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(ch in host for ch in "/@ \t\n[]"):
        raise KubeconfigError("host", f"not a host name or address (got {host!r})")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host:
            raise KubeconfigError("host", f"not a host name or address (got {host!r})") from None
        return host
    return f"[{address}]" if address.version == 6 else str(address)


def _port(port: int | str) -> int:
    text = str(port).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise KubeconfigError("port", f"not a port from 1 to 65535 (got {port!r})")
    return int(text)


def _existing(given: str | None, default: Path, field: str) -> str:
    path = Path(given) if given is not None else default
    if not path.is_file():
        where = "" if given is not None else " (the pod's service account; outside a pod, give the file)"
        raise KubeconfigError(field, f"{path}: no such file{where}")
    # Absolute: a relative path in a kubeconfig is read relative to the kubeconfig's directory.
    return os.path.abspath(path)
