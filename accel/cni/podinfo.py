"""Whether accel-cni captures a pod, and with which spec: from the plugin's configuration and the
pod's information (the API server's Pod, or a file), decided the way istio-cni decides.

istio-cni's rules (cni/pkg/plugin/plugin.go), in its order: not a Kubernetes pod (no
K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS), an excluded namespace, an istio-init container
(istio-init captures it), DISABLE_ENVOY on istio-proxy, no istio-proxy container, a proxy type
other than sidecar, injection disabled (label over annotation), no sidecar.istio.io/status
annotation: each leaves the pod alone. Otherwise its annotations give the spec.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import inputs
from ..inputs.annotations import STATUS_ANNOTATION
from ..spec import CaptureSpec
from .config import DirectorySource, KubernetesSource, PluginConfig

PROXY_CONTAINER, INIT_CONTAINER = "istio-proxy", "istio-init"
INJECT_KEY = "sidecar.istio.io/inject"


class PodInfoError(RuntimeError):
    """The pod's information could not be had. transient: the runtime should try again later."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Decision:
    spec: CaptureSpec | None  # None: the pod is left alone
    why: str
    pod: str | None = None  # NAMESPACE/NAME when the runtime said
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pod:
    """What istio-cni reads of a Pod."""

    containers: frozenset[str] = frozenset()  # init containers and containers
    labels: Mapping[str, str] = field(default_factory=dict)
    document: Mapping[str, Any] = field(default_factory=dict)  # JSON in the --annotations format
    proxy_type: str = "sidecar"  # istio-proxy's `proxy TYPE` arguments


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: "K=V;K=V" (containerd: IgnoreUnknown=1;K8S_POD_NAMESPACE=...;K8S_POD_NAME=...)."""
    pairs = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"CNI_ARGS: {item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def decide(config: PluginConfig, cni_args: Mapping[str, str], container_id: str, pod_ips: list[str]) -> Decision:
    namespace, name = cni_args.get("K8S_POD_NAMESPACE"), cni_args.get("K8S_POD_NAME")
    label = f"{namespace}/{name}" if namespace and name else None
    if config.pod_info is None:
        return Decision(config.default_capture(), "every pod (no podInfo)", label, config.warnings)
    if label is None and isinstance(config.pod_info, KubernetesSource):
        return Decision(None, "not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS)")
    if namespace in config.exclude_namespaces:
        return Decision(None, f"namespace {namespace} is excluded", label)
    if isinstance(config.pod_info, KubernetesSource):
        assert namespace and name  # else label is None: returned above
        pod = _kubernetes_pod(config.pod_info, namespace, name)
    else:
        found = _file_pod(config.pod_info, f"{namespace}_{name}" if label else container_id)
        if found is None:
            return Decision(None, "no annotation file for it", label)
        pod = found
    skip = _skip_reason(pod)
    if skip:
        return Decision(None, skip, label)
    document = dict(pod.document)
    if document.get("pod_ips") is None and pod_ips:
        document["pod_ips"] = pod_ips  # what istio-iptables would find in the pod's namespace
    parsed = inputs.from_annotations(document, base=config.capture)
    return Decision(parsed.spec, "a sidecar pod", label, config.warnings + parsed.warnings)


def _skip_reason(pod: Pod) -> str | None:
    env = pod.document.get("proxy_env") or {}
    annotations = pod.document.get("annotations") or {}
    if INIT_CONTAINER in pod.containers:
        return "it has an istio-init container, which captures its traffic"
    if _go_bool(env.get("DISABLE_ENVOY")):
        return "DISABLE_ENVOY on istio-proxy"
    if pod.containers and PROXY_CONTAINER not in pod.containers:
        return f"no {PROXY_CONTAINER} container"
    if pod.proxy_type != "sidecar":
        return f"proxy type {pod.proxy_type}"
    inject = pod.labels.get(INJECT_KEY, annotations.get(INJECT_KEY))
    if _go_bool(inject) is False:
        return f"{INJECT_KEY} is {inject!r}"
    if STATUS_ANNOTATION not in annotations:
        return f"no {STATUS_ANNOTATION} annotation (not injected)"
    return None


def _go_bool(text: str | None) -> bool | None:
    """Go's strconv.ParseBool, which istio-cni uses; None for anything else."""
    return {
        "1": True,
        "t": True,
        "T": True,
        "TRUE": True,
        "true": True,
        "True": True,
        "0": False,
        "f": False,
        "F": False,
        "FALSE": False,
        "false": False,
        "False": False,
    }.get(text or "")


def _file_pod(source: DirectorySource, stem: str) -> Pod | None:
    path = Path(source.path) / f"{stem}.json"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise PodInfoError(f"{path}: {error}", transient=False) from None
    if not isinstance(document, dict):
        raise PodInfoError(f"{path}: expected a JSON object in the --annotations format", transient=False)
    return Pod(document=document)


def _kubernetes_pod(source: KubernetesSource, namespace: str, name: str) -> Pod:
    pod = _read_pod(source, namespace, name)
    spec = pod.get("spec") or {}
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    document: dict[str, object] = {"annotations": (pod.get("metadata") or {}).get("annotations") or {}}
    labels = dict((pod.get("metadata") or {}).get("labels") or {})
    proxy_type = "sidecar"
    for container in containers:
        if container.get("name") != PROXY_CONTAINER:
            continue
        document["proxy_env"] = {e["name"]: e.get("value", "") for e in container.get("env") or [] if "name" in e}
        context = container.get("securityContext") or {}
        document["proxy_runAsUser"], document["proxy_runAsGroup"] = context.get("runAsUser"), context.get("runAsGroup")
        args = container.get("args") or []
        if len(args) >= 2 and args[0] == "proxy":
            proxy_type = args[1]  # `pilot-agent proxy sidecar` (or router, for gateways)
    return Pod(frozenset(c.get("name") for c in containers), labels, document, proxy_type)


def _read_pod(source: KubernetesSource, namespace: str, name: str) -> dict:
    """GET the Pod, `attempts` times at most (istio-cni: 30 times, 1 s apart): the API server may be
    briefly away. Refused credentials are not worth a retry."""
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.client.rest import ApiException

    configuration = client.Configuration()
    try:
        kube_config.load_kube_config(config_file=source.kubeconfig, client_configuration=configuration)
    except Exception as error:  # the loader raises ConfigException, OSError, yaml errors...
        raise PodInfoError(f"podInfo.kubeconfig {source.kubeconfig}: {error}", transient=False) from None
    configuration.retries = 0  # our loop retries; urllib3's own would multiply the wait
    api = client.CoreV1Api(client.ApiClient(configuration))
    last = "no attempt"
    for attempt in range(source.attempts):
        if attempt:
            time.sleep(source.interval)
        try:
            response = api.read_namespaced_pod(name, namespace, _preload_content=False, _request_timeout=2)
            return json.loads(response.data)  # type: ignore[attr-defined]  # unparsed: a urllib3 response, not a V1Pod
        except ApiException as error:
            if error.status in (401, 403):
                raise PodInfoError(
                    f"the API server refused to give pod {namespace}/{name} ({error.status} "
                    f"{error.reason}): check accel's RBAC and kubeconfig",
                    transient=False,
                ) from None
            last = f"{error.status} {error.reason}"
        except Exception as error:  # urllib3 connection errors, timeouts
            last = f"{type(error).__name__}: {error}"
    raise PodInfoError(
        f"could not read pod {namespace}/{name} from the API server after {source.attempts} attempts: {last}",
        transient=True,
    )
