"""The three ways in read options exactly as Istio does, and all end in the same spec."""

import pytest
from hypothesis import given

from accel import inputs
from accel import spec as s
from accel.spec import CaptureSpec, SpecError
from tests.reference import default_sidecar, golden_cases
from tests.strategies import capture_specs


def args(argv, env=None, **kw):
    return inputs.from_istio_args(argv, env or {}, **kw)


# -- istio-iptables argv and environment ------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["-p", "15002"], ["-p=15002"], ["-p15002"], ["--envoy-port", "15002"], ["--envoy-port=15002"],
])
def test_pflag_value_forms(argv):
    assert args(argv).proxy_port == 15002


def test_boolean_flags_and_explicit_values():
    assert args(["--redirect-dns", "--capture-all-dns"]).dns_capture
    assert not args(["--redirect-dns=false", "--capture-all-dns"]).redirect_dns
    with pytest.raises(SpecError, match="not a boolean"):
        args(["--drop-invalid=maybe"])


def test_empty_values_and_ignored_flags():
    spec = args(["-i", "", "-x", "", "-b", "", "--dry-run", "--log_output_level=default:info",
                 "--log_caller", "default", "--iptables-probe-port", "15002", "--native-nftables"])
    assert spec == CaptureSpec()


def test_stock_istio_init_argv_matches_derived_config():
    derived = default_sidecar()
    assert args(derived["argv"][1:]) == inputs.from_istio_config(derived["effective_config"])


@pytest.mark.parametrize("argv, field", [
    (["-p"], "--envoy-port/-p"),
    (["--no-such-flag"], "--no-such-flag"),
    (["stray"], "istio-iptables arguments"),
    (["-b", "80,http"], "--istio-inbound-ports/-b"),
    (["-i", "10.0.0.0/33"], "--istio-service-cidr/-i"),
    (["-m", "tproxy"], "--istio-inbound-interception-mode/-m"),
    (["-u", "istio-proxy"], "--proxy-uid/-u"),
    (["-c", "bad/name"], "--istio-exclude-interfaces/-c"),
])
def test_bad_arguments_name_the_flag(argv, field):
    with pytest.raises(SpecError) as error:
        args(argv)
    assert error.value.field == field


def test_environment_is_read_with_istio_precedence():
    env = {"ISTIO_SERVICE_CIDR": "10.0.0.0/8", "ISTIO_INBOUND_PORTS": "*", "PROXY_UID": "7"}
    spec = args([], env)
    assert [s.cidr_text(c) for c in spec.outbound_ip_ranges_include] == ["10.0.0.0/8"]
    assert spec.inbound_ports_include == "*"
    assert spec.proxy_uids == spec.proxy_gids == (7,)  # -g defaults to the uid text
    assert args(["-i", "*"], env).outbound_ip_ranges_include == "*"  # argv wins over env
    # an alias read after the main variable wins over it
    assert args([], {"REDIRECT_DNS": "false", "ISTIO_META_DNS_CAPTURE": "true",
                     "CAPTURE_ALL_DNS": "true"}).dns_capture
    assert args([], {"DROP_INVALID": "false", "INVALID_DROP": "true"}).drop_invalid
    # ENVOY_PORT is only logged by istio-iptables, never read
    assert args([], {"ENVOY_PORT": "9999"}).proxy_port == 15001


def test_env_only_settings():
    spec = args([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202",
                     "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"})
    assert spec.owner_groups_include == ("java", "202")
    assert s.cidr_text(spec.host_ipv4_loopback_cidr) == "127.0.0.1/8"
    with pytest.raises(SpecError) as error:
        args([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(str(g) for g in range(65))})
    assert error.value.field == "ISTIO_OUTBOUND_OWNER_GROUPS"
    with pytest.raises(SpecError) as error:
        args([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.0/8"})
    assert error.value.field == "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"


def test_dns_servers_come_from_resolv_conf_only_when_needed(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\n")
    spec = args(["--redirect-dns"], resolv_conf=str(resolv))
    assert spec.dns_servers_v4 == ("10.96.0.10",) and spec.dns_servers_v6 == ("fd00::a",)
    # capture-all needs no server list, so istio-iptables does not read the file
    assert args(["--redirect-dns", "--capture-all-dns"], resolv_conf=str(resolv)).dns_servers_v4 == ()
    assert args([], resolv_conf="/nonexistent").dns_servers_v4 == ()
    with pytest.raises(SpecError, match="cannot read resolv.conf"):
        args(["--redirect-dns"], resolv_conf="/nonexistent")
    given = args(["--redirect-dns"], dns_servers=["127.0.0.53"], resolv_conf="/nonexistent")
    assert given.dns_servers_v4 == ("127.0.0.53",)


# -- Istio config JSON ------------------------------------------------------------------

def test_config_absent_fields_take_cli_defaults():
    assert inputs.from_istio_config({}) == args([])


def test_config_errors_name_the_go_field():
    for config, field in [({"ProxyPort": "70000"}, "ProxyPort"), ({"ProxyPorts": "1"}, "ProxyPorts"),
                          ({"DNSServersV4": ["::1"]}, "DNSServersV4"), ({"EnableIPv6": "sure"}, "EnableIPv6"),
                          ({"InboundInterceptionMode": "tproxy"}, "InboundInterceptionMode")]:
        with pytest.raises(SpecError) as error:
            inputs.from_istio_config(config)
        assert error.value.field == field


def test_config_accepts_numbers_and_booleans():
    spec = inputs.from_istio_config({"ProxyPort": 15002, "RedirectDNS": True, "CaptureAllDNS": True})
    assert spec.proxy_port == 15002 and spec.dns_capture


@pytest.mark.parametrize("case", golden_cases(), ids=[c.id for c in golden_cases()])
def test_config_round_trips(case):
    spec = case.spec
    assert inputs.from_istio_config(inputs.to_istio_config(spec)) == spec


@given(capture_specs)
def test_any_spec_round_trips_through_istio_config(spec):
    assert inputs.from_istio_config(inputs.to_istio_config(spec)) == spec


# -- istio-cni annotations --------------------------------------------------------------

def pod(annotations=None, **kw):
    document = {"annotations": {"sidecar.istio.io/status": "{}", **(annotations or {})}, **kw}
    return inputs.from_annotations(document)


def test_cni_defaults():
    spec = pod().spec
    assert spec.inbound_ports_include == "*" and spec.outbound_ip_ranges_include == "*"
    assert spec.inbound_ports_exclude == (15020, 15021, 15090)
    assert spec.outbound_ports_exclude == (15020,)
    assert spec.proxy_uids == spec.proxy_gids == (1337,)
    assert not pod().warnings


def test_cni_merges_excluded_inbound_ports_and_reads_security_context():
    spec = pod({"traffic.sidecar.istio.io/excludeInboundPorts": "15021,8080"},
               proxy_runAsUser=1000670000, proxy_runAsGroup=0).spec
    assert spec.inbound_ports_exclude == (15021, 8080, 15020, 15090)
    assert spec.proxy_uids == (1000670000,) and spec.proxy_gids == (1337,)  # 0 means unset


def test_cni_dns_capture_is_capture_all():
    spec = pod(proxy_env={"ISTIO_META_DNS_CAPTURE": "true"}).spec
    assert spec.redirect_dns and spec.capture_all_dns and spec.dns_capture


def test_cni_reroute_interfaces_win_over_deprecated_key():
    spec = pod({"istio.io/reroute-virtual-interfaces": "eth1",
                "traffic.sidecar.istio.io/kubevirtInterfaces": "eth2"}).spec
    assert spec.kube_virt_interfaces == ("eth1",)
    assert pod({"traffic.sidecar.istio.io/kubevirtInterfaces": "eth2"}).spec.kube_virt_interfaces == ("eth2",)


def test_cni_ipv6_detection_from_pod_ips():
    assert pod(pod_ips=["fd00::5", "10.0.0.5"]).spec.enable_ipv6
    assert not pod(pod_ips=["10.0.0.5", "fd00::5"]).spec.enable_ipv6
    assert pod(pod_ips=["10.0.0.5", "fd00::5"], proxy_env={"ISTIO_DUAL_STACK": "true"}).spec.enable_ipv6
    assert not pod(pod_ips=["fe80::1", "10.0.0.5"]).spec.enable_ipv6  # link-local is skipped


@pytest.mark.parametrize("document, field", [
    ({"annotations": {"sidecar.istio.io/interceptionMode": "NONE"}}, "sidecar.istio.io/interceptionMode"),
    ({"annotations": {"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/33"}},
     "traffic.sidecar.istio.io/includeOutboundIPRanges"),
    ({"annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "*"}},
     "traffic.sidecar.istio.io/excludeOutboundPorts"),
    ({"annotations": {"traffic.sidecar.istio.io/excludeInterfaces": "bad name"}},
     "traffic.sidecar.istio.io/excludeInterfaces"),
    ({"proxy_env": {"ISTIO_META_DNS_CAPTURE": "yes"}}, "proxy_env ISTIO_META_DNS_CAPTURE"),
    ({"proxy_runAsUser": "1000"}, "proxy_runAsUser"),
    ({"annotations": {}, "labels": {}}, "labels"),
])
def test_cni_bad_values_name_the_annotation(document, field):
    with pytest.raises(SpecError) as error:
        inputs.from_annotations(document)
    assert error.value.field == field


def test_cni_warns_about_unmeshed_pods_and_unknown_traffic_annotations():
    result = inputs.from_annotations({"annotations": {"traffic.sidecar.istio.io/includeInboundPort": "80"}})
    assert any("sidecar.istio.io/status" in w for w in result.warnings)
    assert any("includeInboundPort " in w for w in result.warnings)
