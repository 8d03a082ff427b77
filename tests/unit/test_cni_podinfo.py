"""Which pods accel-cni captures and with which spec: istio-cni's rules, against a local server
that answers the Pod API as the API server does (tests/fake_apiserver.py), and against files."""

from __future__ import annotations

import json

import pytest

from accel import inputs
from accel.cni import config as cni_config
from accel.cni.podinfo import PodInfoError, decide, parse_cni_args
from accel.spec import SpecError
from tests.fake_apiserver import FakeApiServer, pod

STATUS = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}
SIDECAR = {"args": ["proxy", "sidecar"], "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}}
ARGS = {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web"}


def kubernetes(tmp_path, server: FakeApiServer, **plugin) -> cni_config.PluginConfig:
    source = {
        "source": "kubernetes",
        "kubeconfig": str(server.kubeconfig(tmp_path / "kubeconfig")),
        "attempts": 3,
        "interval": 0,
    }
    return cni_config.parse({"type": "accel-cni", "podInfo": source, **plugin})


def decided(tmp_path, the_pod: dict, args=ARGS, pod_ips=(), **plugin):
    with FakeApiServer({"shop/web": the_pod}) as server:
        return decide(kubernetes(tmp_path, server, **plugin), args, "c1", list(pod_ips))


def test_a_sidecar_pod_gets_its_annotations_as_render_annotations_reads_them(tmp_path):
    annotations = {
        **STATUS,
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.0/12",
        "traffic.sidecar.istio.io/excludeInboundPorts": "9000",
    }
    env = [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]
    decision = decided(tmp_path, pod("shop", "web", annotations=annotations, proxy={**SIDECAR, "env": env}))
    expected = inputs.from_annotations(
        {
            "annotations": annotations,
            "proxy_env": {"ISTIO_META_DNS_CAPTURE": "true"},
            "proxy_runAsUser": 1337,
            "proxy_runAsGroup": 1337,
        }
    ).spec
    assert decision.spec == expected and decision.pod == "shop/web"
    assert decision.spec.redirect_dns and decision.spec.inbound_ports_exclude == (9000, 15020, 15021, 15090)


@pytest.mark.parametrize(
    "the_pod, why",
    [
        (pod("shop", "web", annotations=STATUS, proxy=SIDECAR, init=("istio-init",)), "istio-init"),
        (
            pod(
                "shop",
                "web",
                annotations=STATUS,
                proxy={**SIDECAR, "env": [{"name": "DISABLE_ENVOY", "value": "true"}]},
            ),
            "DISABLE_ENVOY",
        ),
        (pod("shop", "web", annotations=STATUS), "no istio-proxy container"),
        (pod("shop", "web", annotations=STATUS, proxy={"args": ["proxy", "router"]}), "proxy type router"),
        (pod("shop", "web", annotations={**STATUS, "sidecar.istio.io/inject": "false"}, proxy=SIDECAR), "inject"),
        (
            pod(
                "shop",
                "web",
                annotations={**STATUS, "sidecar.istio.io/inject": "true"},
                labels={"sidecar.istio.io/inject": "false"},
                proxy=SIDECAR,
            ),
            "inject",
        ),  # the label wins
        (pod("shop", "web", proxy=SIDECAR), "sidecar.istio.io/status"),
    ],
)
def test_pods_istio_cni_would_leave_alone_are_left_alone(tmp_path, the_pod, why):
    decision = decided(tmp_path, the_pod)
    assert decision.spec is None and why in decision.why


def test_an_inject_value_go_cannot_parse_does_not_disable(tmp_path):
    the_pod = pod("shop", "web", annotations={**STATUS, "sidecar.istio.io/inject": "maybe"}, proxy=SIDECAR)
    assert decided(tmp_path, the_pod).spec is not None


def test_excluded_namespaces_and_non_kubernetes_pods_are_not_looked_up(tmp_path):
    with FakeApiServer({}) as server:
        config = kubernetes(tmp_path, server, excludeNamespaces=["shop"])
        assert decide(config, ARGS, "c1", []).spec is None
        assert decide(config, {}, "c1", []).spec is None
        assert server.requests == []


def test_capture_is_the_base_the_annotations_change(tmp_path):
    capture = {
        "ProxyPort": "15002",
        "InboundCapturePort": "15007",
        "OutboundIPRangesInclude": "10.0.0.0/8",
        "InboundPortsInclude": "*",
        "ProxyUID": "1337",
        "InboundInterceptionMode": "REDIRECT",
    }
    annotations = {**STATUS, "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.1.0.0/16"}
    spec = decided(tmp_path, pod("shop", "web", annotations=annotations, proxy=SIDECAR), capture=capture).spec
    assert (spec.proxy_port, spec.inbound_capture_port) == (15002, 15007)  # kept from capture
    assert [str(c) for c in spec.outbound_ip_ranges_include] == ["10.0.0.0/8"]
    assert [str(c) for c in spec.outbound_ip_ranges_exclude] == ["10.1.0.0/16"]  # the annotation's
    assert spec.inbound_ports_exclude == (15090, 15021, 15020)  # the stock sidecar's, which are its own


def test_capture_names_only_what_differs_from_the_stock_sidecar():
    capture = cni_config.parse({"type": "accel-cni", "capture": {"OutboundIPRangesExclude": "10.96.0.0/12"}}).capture
    stock = inputs.from_istio_args(inputs.ISTIO_INIT_DEFAULT_ARGS)
    assert capture == stock.replace(outbound_ip_ranges_exclude=capture.outbound_ip_ranges_exclude)
    assert [str(c) for c in capture.outbound_ip_ranges_exclude] == ["10.96.0.0/12"]
    with pytest.raises(cni_config.ConfigError, match="capture.ProxyPort"):
        cni_config.parse({"type": "accel-cni", "capture": {"ProxyPort": "port"}})
    with pytest.raises(cni_config.ConfigError, match="capture.Nope"):
        cni_config.parse({"type": "accel-cni", "capture": {"Nope": "1"}})


def test_the_pods_addresses_from_the_previous_plugin_decide_ipv6(tmp_path):
    the_pod = pod("shop", "web", annotations=STATUS, proxy=SIDECAR)
    assert decided(tmp_path, the_pod, pod_ips=["fd00::5"]).spec.enable_ipv6
    assert not decided(tmp_path, the_pod, pod_ips=["10.1.2.3"]).spec.enable_ipv6


def test_a_bad_annotation_is_an_error_naming_it(tmp_path):
    the_pod = pod(
        "shop", "web", annotations={**STATUS, "traffic.sidecar.istio.io/excludeInboundPorts": "99999"}, proxy=SIDECAR
    )
    with pytest.raises(SpecError, match="excludeInboundPorts"):
        decided(tmp_path, the_pod)


def test_the_api_server_is_asked_again_a_bounded_number_of_times(tmp_path):
    the_pod = pod("shop", "web", annotations=STATUS, proxy=SIDECAR)
    with FakeApiServer({"shop/web": the_pod}, fail_first=2) as server:
        assert decide(kubernetes(tmp_path, server), ARGS, "c1", []).spec is not None
        assert len(server.requests) == 3
    with FakeApiServer({"shop/web": the_pod}, fail_first=3) as server:
        with pytest.raises(PodInfoError, match="after 3 attempts: 503") as error:
            decide(kubernetes(tmp_path, server), ARGS, "c1", [])
        assert error.value.transient and len(server.requests) == 3


def test_refused_credentials_are_not_retried(tmp_path):
    with FakeApiServer({}) as server:
        config = cni_config.parse(
            {
                "type": "accel-cni",
                "podInfo": {
                    "source": "kubernetes",
                    "kubeconfig": str(server.kubeconfig(tmp_path / "kc", token="wrong")),
                    "attempts": 5,
                    "interval": 0,
                },
            }
        )
        with pytest.raises(PodInfoError, match="RBAC") as error:
            decide(config, ARGS, "c1", [])
        assert not error.value.transient and len(server.requests) == 1


def test_an_unreadable_kubeconfig_is_not_transient(tmp_path):
    config = cni_config.parse(
        {"type": "accel-cni", "podInfo": {"source": "kubernetes", "kubeconfig": str(tmp_path / "absent")}}
    )
    with pytest.raises(PodInfoError, match="podInfo.kubeconfig") as error:
        decide(config, ARGS, "c1", [])
    assert not error.value.transient


def test_annotation_files_are_named_by_pod_or_else_by_container(tmp_path):
    (tmp_path / "shop_web.json").write_text(json.dumps({"annotations": STATUS}))
    (tmp_path / "default-box.json").write_text(json.dumps({"annotations": {**STATUS, "sidecar.istio.io/inject": "0"}}))
    config = cni_config.parse({"type": "accel-cni", "podInfo": {"source": "dir", "path": str(tmp_path)}})
    assert decide(config, ARGS, "ignored", []).spec is not None
    assert "inject" in decide(config, {}, "default-box", []).why  # ctr passes no K8S_POD_* arguments
    assert decide(config, {}, "default-other", []).why == "no annotation file for it"
    (tmp_path / "shop_web.json").write_text("{")
    with pytest.raises(PodInfoError, match="shop_web.json"):
        decide(config, ARGS, "ignored", [])


def test_without_pod_info_every_pod_gets_the_capture():
    assert decide(cni_config.parse({"type": "accel-cni"}), {}, "c1", []).spec == inputs.from_istio_args(
        inputs.ISTIO_INIT_DEFAULT_ARGS
    )


def test_cni_args_are_key_value_pairs():
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a=b;") == {"IgnoreUnknown": "1", "K8S_POD_NAME": "a=b"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_cni_args("oops")
