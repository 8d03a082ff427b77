"""accel-cni's object in a node's conflist, read strictly: a misspelt key is an error naming it,
never a default silently taken.

    {"type": "accel-cni",
     "stateDir": "/var/lib/accel",                  # the node agent's (accel up --state)
     "capture": {...},                              # Istio's config JSON over the stock sidecar's
     "podInfo": {"source": "kubernetes", "kubeconfig": PATH, "attempts": 30, "interval": 1}
              | {"source": "dir", "path": DIR},     # where pod annotations come from
     "excludeNamespaces": ["kube-system"],
     "sockmap": false,                              # short-circuit each pod's app <-> sidecar hops
     "logFile": PATH}

"capture" is the node's spec in Istio's config JSON; the fields it does not name keep the stock
sidecar's values (what Istio's injector gives istio-init). Without podInfo every pod is captured
with it. With podInfo the pod's information decides, as
istio-cni decides: pods without a sidecar are left alone, and a sidecar pod's annotations apply
exactly as `accel render --annotations` applies them, over "capture" when it is given (what the
annotations do not say keeps its value there) and over istio-cni's defaults when it is not.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from .. import constants as c
from .. import inputs
from ..node.paths import DEFAULT_STATE
from ..spec import CaptureSpec, SpecError

# Keys the runtime puts into every plugin's object (CNI spec, "Section 1: Network configuration"
# and the conventions): accepted, and not accel's to check.
RUNTIME_KEYS = ("cniVersion", "name", "prevResult", "runtimeConfig", "args", "capabilities")
KEYS = ("type", "stateDir", "capture", "podInfo", "excludeNamespaces", "sockmap", "logFile", "convertedFrom")
POD_INFO_KEYS = {"kubernetes": ("source", "kubeconfig", "attempts", "interval"), "dir": ("source", "path")}


class ConfigError(ValueError):
    """A bad plugin configuration, naming the key as the conflist spells it."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(f"{key}: {reason}")


@dataclass(frozen=True)
class KubernetesSource:
    """Pods read from the API server; a pod is looked for `attempts` times, `interval` s apart."""

    kubeconfig: str
    attempts: int = 30
    interval: float = 1.0


@dataclass(frozen=True)
class DirectorySource:
    """Pods described by files DIR/NAMESPACE_NAME.json in the --annotations format."""

    path: str


@dataclass(frozen=True)
class PluginConfig:
    state_dir: Path = Path(DEFAULT_STATE)
    capture: CaptureSpec | None = None
    pod_info: KubernetesSource | DirectorySource | None = None
    exclude_namespaces: tuple[str, ...] = c.CNI_EXCLUDED_NAMESPACES_DEFAULT
    sockmap: bool = False  # the eBPF short-circuit for every pod it captures (accel pod add --sockmap)
    log_file: Path | None = None
    converted_from: str | None = None  # set by `accel cni install` when it made a .conf into a list
    warnings: tuple[str, ...] = ()

    def default_capture(self) -> CaptureSpec:
        """The spec of a pod when nothing says otherwise (no podInfo)."""
        return self.capture or _stock()


class _Given(TypedDict, total=False):
    """The PluginConfig fields the document sets; the others keep their defaults."""

    state_dir: Path
    capture: CaptureSpec
    pod_info: KubernetesSource | DirectorySource
    exclude_namespaces: tuple[str, ...]
    sockmap: bool
    log_file: Path
    converted_from: str
    warnings: tuple[str, ...]


def _stock() -> CaptureSpec:
    """What Istio's injector gives istio-init for a plain pod."""
    return inputs.from_istio_args(list(c.ISTIO_INIT_DEFAULT_ARGS))


def parse(document: object) -> PluginConfig:
    """The plugin's object (as the runtime hands it over, or as `accel cni install --config` reads it)."""
    if not isinstance(document, Mapping):
        raise ConfigError("(configuration)", "expected a JSON object")
    unknown = [key for key in document if key not in KEYS + RUNTIME_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], KEYS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(unknown[0], f"unknown key ({hint}accel-cni reads {', '.join(KEYS)})")
    if document.get("type") != c.CNI_PLUGIN_TYPE:
        raise ConfigError("type", f"expected {c.CNI_PLUGIN_TYPE!r} (got {document.get('type')!r})")
    values: _Given = {}
    if "stateDir" in document:
        values["state_dir"] = Path(_absolute(document, "stateDir"))
    if "logFile" in document:
        values["log_file"] = Path(_absolute(document, "logFile"))
    if "convertedFrom" in document:
        values["converted_from"] = _string(document, "convertedFrom")
    if "capture" in document:
        capture = document["capture"]
        if not isinstance(capture, Mapping):
            raise ConfigError("capture", "expected an object in Istio's config JSON (as --istio-config reads)")
        try:
            # Over the stock sidecar, not istio-iptables' empty defaults: {"ProxyPort": "15002"}
            # must not also mean "capture no outbound traffic".
            parsed = inputs.read_istio_config({**inputs.to_istio_config(_stock()), **capture})
        except SpecError as error:
            raise ConfigError(f"capture.{error.field}", f"{error.reason} (got {error.value!r})") from None
        values["capture"] = parsed.spec
        values["warnings"] = tuple(f"capture: {note}" for note in parsed.warnings)
    if "excludeNamespaces" in document:
        names = document["excludeNamespaces"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError("excludeNamespaces", "expected a list of namespace names")
        values["exclude_namespaces"] = tuple(names)
    if "podInfo" in document:
        values["pod_info"] = _pod_info(document["podInfo"])
    if "sockmap" in document:
        if not isinstance(document["sockmap"], bool):
            raise ConfigError("sockmap", f"expected true or false (got {document['sockmap']!r})")
        values["sockmap"] = document["sockmap"]
    return PluginConfig(**values)


def _pod_info(document: object) -> KubernetesSource | DirectorySource:
    if not isinstance(document, Mapping) or document.get("source") not in POD_INFO_KEYS:
        raise ConfigError(
            "podInfo.source", 'expected {"source": "kubernetes", "kubeconfig": PATH} or {"source": "dir", "path": DIR}'
        )
    source = document["source"]
    unknown = [key for key in document if key not in POD_INFO_KEYS[source]]
    if unknown:
        raise ConfigError(
            f"podInfo.{unknown[0]}", f"unknown key for source {source!r} (expected {', '.join(POD_INFO_KEYS[source])})"
        )
    if source == "dir":
        return DirectorySource(_absolute(document, "path", "podInfo."))
    attempts = document.get("attempts", 30)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 600:
        raise ConfigError("podInfo.attempts", f"expected a whole number from 1 to 600 (got {attempts!r})")
    interval = document.get("interval", 1)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= 60:
        raise ConfigError("podInfo.interval", f"expected seconds from 0 to 60 (got {interval!r})")
    return KubernetesSource(_absolute(document, "kubeconfig", "podInfo."), attempts, float(interval))


def _string(document: Mapping, key: str, prefix: str = "") -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(prefix + key, f"expected a non-empty string (got {value!r})")
    return value


def _absolute(document: Mapping, key: str, prefix: str = "") -> str:
    value = _string(document, key, prefix)
    if not value.startswith("/"):
        raise ConfigError(
            prefix + key,
            f"expected an absolute path (got {value!r}): a runtime runs plugins from a directory of its own",
        )
    return value
