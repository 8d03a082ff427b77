"""accel-cni: the chained CNI plugin (CNI spec 1.0.0; 0.3.x and 0.4.0 configurations too).

The runtime runs it after the node's own plugins with CNI_COMMAND and the CNI_* variables set and
the plugin's object (name, cniVersion and prevResult added) on stdin:

  ADD      capture the pod (accel pod add, keyed by CNI_CONTAINERID, same lock), then print
           prevResult through unchanged at the configuration's version;
  DEL      stop capturing it; succeeds when it, its namespace or the node's state is gone already;
  CHECK    say whether its capture is in place (0.4.0 and later);
  VERSION  the versions it speaks.

stdout carries the result or the error object and nothing else; logs go to stderr and, if the
configuration names one, a log file (JSON lines). Exit status 0, or 1 with an error object.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .. import constants as c

# The CNI spec's own codes, and accel-cni's (100 and up).
INCOMPATIBLE_VERSION = 1
BAD_ENVIRONMENT = 4  # a CNI_* variable missing or malformed
UNDECODABLE = 6  # stdin is not a JSON object
INVALID_CONFIG = 7  # the runtime's part of it: cniVersion
TRY_AGAIN_LATER = 11  # accel is not up on this node, or the API server is away: the runtime retries
BAD_PLUGIN_CONFIG = 100  # accel-cni's object: stateDir, capture, podInfo, ...
BAD_ANNOTATION = 101  # the pod's annotations (or its annotation file) give no valid spec
POD_INFO_UNAVAILABLE = 102  # the pod's information was refused or unreadable (not transient)
CAPTURE_FAILED = 103  # the kernel, or the node's backend, refused the capture
NOT_IN_PLACE = 104  # CHECK: the pod's capture is missing or differs
INTERNAL = 199  # a bug in accel-cni: the log file holds its traceback

ABOUT = (
    "accel-cni: accel's chained CNI plugin. A container runtime runs it, with CNI_COMMAND and the\n"
    "plugin's configuration on stdin; see `accel cni install --help` and docs/cni.md.\n"
)
LOG_LIMIT = 10 * 1024 * 1024  # the log file is rotated to LOG.1 beyond this


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


@dataclass
class Call:
    """One invocation: what the runtime gave, and where to log."""

    command: str
    environ: Mapping[str, str]
    log_file: Path | None = None
    version: str = c.CNI_VERSIONS[-1]

    def env(self, name: str) -> str:
        value = self.environ.get(name, "")
        if not value:
            raise CniError(BAD_ENVIRONMENT, f"{name} is not set (the runtime must set it for {self.command})")
        return value

    def log(self, level: str, message: str, **fields) -> None:
        line = json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "level": level,
                "command": self.command,
                "container": self.environ.get("CNI_CONTAINERID", ""),
                "msg": message,
                **fields,
            }
        )
        print(line, file=sys.stderr)
        if self.log_file is not None:
            try:
                if self.log_file.stat().st_size > LOG_LIMIT:
                    os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
            except FileNotFoundError:
                pass
            try:
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                with open(self.log_file, "a") as log:
                    log.write(line + "\n")
            except OSError as error:  # the log is a help, never a reason to fail a pod
                print(json.dumps({"level": "warning", "msg": f"log file {self.log_file}: {error}"}), file=sys.stderr)


def main() -> None:
    sys.exit(run(os.environ, sys.stdin.buffer.read() if os.environ.get("CNI_COMMAND") else b"", sys.stdout))


def run(environ: Mapping[str, str], stdin: bytes, out: TextIO) -> int:
    """One CNI call; returns the exit status, having written the result or error object to out."""
    call = Call(environ.get("CNI_COMMAND", ""), environ)
    if not call.command:
        sys.stderr.write(ABOUT)
        return 0
    try:
        if call.command == "VERSION":
            _print(out, {"cniVersion": c.CNI_VERSIONS[-1], "supportedVersions": list(c.CNI_VERSIONS)})
            return 0
        document = _decode(stdin)
        call.version = _version(document, call.command)
        from .config import ConfigError, parse

        try:
            config = parse(document)
        except ConfigError as error:
            if call.command != "DEL":
                raise CniError(BAD_PLUGIN_CONFIG, f"accel-cni configuration: {error}") from None
            # A pod's teardown is never held up by a configuration ADD refused: DEL needs stateDir only.
            config = _state_dir_only(document)
            call.log("warning", f"accel-cni configuration: {error}; removing by stateDir {config.state_dir}")
        call.log_file = config.log_file
        handlers = {"ADD": _add, "DEL": _delete, "CHECK": _check}
        if call.command not in handlers:
            raise CniError(BAD_ENVIRONMENT, f"CNI_COMMAND {call.command!r}: expected ADD, DEL, CHECK or VERSION")
        result = handlers[call.command](call, config, document)
        if result is not None:
            _print(out, result)
        return 0
    except CniError as error:
        call.log("error", error.msg, code=error.code)
        _print(
            out,
            {
                "cniVersion": call.version,
                "code": error.code,
                "msg": error.msg,
                **({"details": error.details} if error.details else {}),
            },
        )
        return 1
    except Exception as error:  # never a traceback on stdout: the runtime reads an error object there
        call.log("error", "internal error", traceback=traceback.format_exc())
        _print(
            out,
            {
                "cniVersion": call.version,
                "code": INTERNAL,
                "msg": f"accel-cni internal error: {type(error).__name__}: {error}",
            },
        )
        return 1


def _add(call: Call, config, document: Mapping) -> dict:
    container, netns = call.env("CNI_CONTAINERID"), call.env("CNI_NETNS")
    previous = document.get("prevResult")
    decision = _decide(call, config, _pod_ips(previous))
    if decision.spec is None:
        call.log("info", f"not captured: {decision.why}", pod=decision.pod)
        return _passed_through(previous, call.version)
    from ..node import pods

    outcome = _node_call(
        lambda paths: pods.add(paths, container, netns, decision.spec, name=decision.pod, shortcut=config.sockmap),
        config,
    )
    call.log("info", f"captured: {outcome}", pod=decision.pod, netns=netns, warnings=list(decision.warnings))
    return _passed_through(previous, call.version)


def _delete(call: Call, config, document: Mapping) -> None:
    container = call.env("CNI_CONTAINERID")
    from ..node import pods, state

    if state.load(config.state_dir) is None:  # accel is down: nothing of the pod is left to remove
        call.log("info", "nothing to remove: accel is not up on this node")
        return None
    outcome = _node_call(lambda paths: pods.delete(paths, container), config)
    call.log("info", f"removed: {outcome}")
    return None


def _check(call: Call, config, document: Mapping) -> None:
    container, netns = call.env("CNI_CONTAINERID"), call.env("CNI_NETNS")
    decision = _decide(call, config, _pod_ips(document.get("prevResult")))
    if decision.spec is None:
        return None
    from ..node import pods

    problems = _node_call(lambda paths: pods.verify(paths, container, netns, decision.spec, config.sockmap), config)
    if problems:
        raise CniError(NOT_IN_PLACE, "; ".join(problems))
    return None


def _decide(call: Call, config, pod_ips: list[str]):
    from ..spec import SpecError
    from .podinfo import PodInfoError, decide, parse_cni_args

    try:
        args = parse_cni_args(call.environ.get("CNI_ARGS", ""))
    except ValueError as error:
        raise CniError(BAD_ENVIRONMENT, str(error)) from None
    try:
        return decide(config, args, call.env("CNI_CONTAINERID"), pod_ips)
    except SpecError as error:
        raise CniError(BAD_ANNOTATION, f"the pod's annotations: {error}") from None
    except PodInfoError as error:
        raise CniError(TRY_AGAIN_LATER if error.transient else POD_INFO_UNAVAILABLE, str(error)) from None


def _node_call(action, config):
    """Run a pod command against the node agent's state, its errors as CNI codes."""
    from ..backends import BackendError
    from ..ebpf.datapath import DatapathError
    from ..ebpf.maps import UnsupportedSpec
    from ..node import state
    from ..node.paths import NodeError, NodePaths
    from ..node.pods import NotUp

    try:
        current = state.load(config.state_dir)
        if current is None:
            raise NotUp(f"accel is not up on this node (no state in {config.state_dir}): run accel up")
        return action(NodePaths(None, Path(current.bpffs), config.state_dir))
    except NotUp as error:
        raise CniError(TRY_AGAIN_LATER, str(error)) from None
    except UnsupportedSpec as error:
        raise CniError(BAD_ANNOTATION, f"the node's backend cannot capture this pod as asked: {error}") from None
    except (NodeError, BackendError, DatapathError, OSError) as error:
        raise CniError(CAPTURE_FAILED, str(error)) from None


def _state_dir_only(document: Mapping):
    from .config import PluginConfig

    given = document.get("stateDir")
    return PluginConfig(state_dir=Path(given)) if isinstance(given, str) and given.startswith("/") else PluginConfig()


def _decode(stdin: bytes) -> dict:
    try:
        document = json.loads(stdin)
    except ValueError as error:
        raise CniError(UNDECODABLE, f"stdin is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise CniError(UNDECODABLE, "stdin is not a JSON object (the plugin's network configuration)")
    return document


def _version(document: Mapping, command: str) -> str:
    version = document.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion is missing from the network configuration")
    if version not in c.CNI_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION, f"cniVersion {version} is not one accel-cni speaks ({', '.join(c.CNI_VERSIONS)})"
        )
    if command == "CHECK" and version in ("0.3.0", "0.3.1"):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later (got {version})")
    return version


def _pod_ips(previous) -> list[str]:
    """The pod's addresses, from the previous plugin's result ("ips": [{"address": "10.1.2.3/24"}])."""
    if not isinstance(previous, Mapping):
        return []
    return [
        str(ip["address"]).split("/")[0]
        for ip in previous.get("ips") or []
        if isinstance(ip, Mapping) and ip.get("address")
    ]


def _passed_through(previous, version: str) -> dict:
    """prevResult unchanged at the configuration's version (the runtime gave it at that version);
    with none, the empty result."""
    return {**previous, "cniVersion": version} if isinstance(previous, Mapping) else {"cniVersion": version}


def _print(out: TextIO, document: dict) -> None:
    out.write(json.dumps(document) + "\n")
    out.flush()
