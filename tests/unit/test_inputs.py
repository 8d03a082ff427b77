"""The three ways in read options exactly as Istio does, and all end in the same spec."""

import pytest
from hypothesis import given

from accel import inputs
from accel import spec as s
from accel.inputs import parsers
from accel.render import render_iptables
from accel.spec import CaptureSpec, SpecError
from tests.reference import default_sidecar, golden_cases
from tests.strategies import capture_specs


def args(argv, env=None, **kw):
    return inputs.from_istio_args(argv, env or {}, **kw)


# -- istio-iptables argv and environment ------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-p", "15002"],
        ["-p=15002"],
        ["-p15002"],
        ["--envoy-port", "15002"],
        ["--envoy-port=15002"],
    ],
)
def test_pflag_value_forms(argv):
    assert args(argv).proxy_port == 15002


def test_boolean_flags_and_explicit_values():
    assert args(["--redirect-dns", "--capture-all-dns"]).dns_capture
    assert not args(["--redirect-dns=false", "--capture-all-dns"]).redirect_dns
    with pytest.raises(SpecError, match="not a boolean"):
        args(["--drop-invalid=maybe"])


def test_empty_values_and_ignored_flags():
    spec = args(
        [
            "-i",
            "",
            "-x",
            "",
            "-b",
            "",
            "--dry-run",
            "--log_output_level=default:info",
            "--log_caller",
            "default",
            "--iptables-probe-port",
            "15002",
            "--native-nftables",
        ]
    )
    assert spec == CaptureSpec()


def test_stock_istio_init_argv_matches_derived_config():
    derived = default_sidecar()
    assert args(derived["argv"][1:]) == inputs.from_istio_config(derived["effective_config"])


@pytest.mark.parametrize(
    "argv, field",
    [
        (["-p"], "--envoy-port/-p"),
        (["--no-such-flag"], "--no-such-flag"),
        (["stray"], "istio-iptables arguments"),
        (["-b", "80,http"], "--istio-inbound-ports/-b"),
        (["-i", "10.0.0.0/33"], "--istio-service-cidr/-i"),
        (["-m", "tproxy"], "--istio-inbound-interception-mode/-m"),
        (["-u", "istio-proxy"], "--proxy-uid/-u"),
        (["-c", "bad/name"], "--istio-exclude-interfaces/-c"),
    ],
)
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
    assert args([], {"REDIRECT_DNS": "false", "ISTIO_META_DNS_CAPTURE": "true", "CAPTURE_ALL_DNS": "true"}).dns_capture
    assert args([], {"DROP_INVALID": "false", "INVALID_DROP": "true"}).drop_invalid
    # ENVOY_PORT is only logged by istio-iptables, never read
    assert args([], {"ENVOY_PORT": "9999"}).proxy_port == 15001


def test_env_only_settings():
    spec = args([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202", "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"})
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
    with pytest.raises(SpecError, match="cannot read file") as error:
        args(["--redirect-dns"], resolv_conf="/nonexistent")
    assert error.value.field == "--resolv-conf" and error.value.value == "/nonexistent"
    given = args(["--redirect-dns"], dns_servers=["127.0.0.53"], resolv_conf="/nonexistent")
    assert given.dns_servers_v4 == ("127.0.0.53",)


def test_scoped_nameservers_are_refused_wherever_they_come_from(tmp_path):
    # istio-iptables keeps the zone (netip), writes `-d fe80::1%eth0/128` and ip6tables-restore refuses it.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.96.0.10\nnameserver fe80::1%eth0\n")
    with pytest.raises(SpecError, match="zone") as error:
        args(["--redirect-dns"], resolv_conf=str(resolv))
    assert (error.value.field, error.value.value) == (f"nameserver in {resolv}", "fe80::1%eth0")
    with pytest.raises(SpecError, match="zone") as error:
        args(["--redirect-dns"], dns_servers=["fe80::1%eth0"])
    assert error.value.field == "--dns-servers"
    with pytest.raises(SpecError, match="zone") as error:
        inputs.from_istio_config({"RedirectDNS": True, "DNSServersV6": ["fe80::1%eth0"]})
    assert error.value.field == "DNSServersV6"
    assert args(["--redirect-dns"], dns_servers=["fe80::1"]).dns_servers_v6 == ("fe80::1",)


def test_resolv_conf_nameservers_are_written_as_istio_writes_them(tmp_path):
    # istio-iptables re-prints resolv.conf's addresses with Go's netip; a config's are used as written.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 2001:DB8:0::A\nnameserver ::ffff:10.0.0.1\nnameserver 10.96.0.10\n")
    spec = args(["--redirect-dns"], resolv_conf=str(resolv))
    assert spec.dns_servers_v6 == ("2001:db8::a", "::ffff:10.0.0.1") and spec.dns_servers_v4 == ("10.96.0.10",)
    assert "-d 2001:db8::a/128" in render_iptables(spec.replace(enable_ipv6=True)).ipv6
    assert inputs.from_istio_config({"DNSServersV6": ["::127.0.0.53"]}).dns_servers_v6 == ("::127.0.0.53",)


# -- empty, repeated and host-bit list items, empty values: what istio-iptables does ---------


def read(argv, env=None, **kw):
    return inputs.read_istio_args(argv, env or {}, **kw)


def test_empty_list_items_are_skipped_as_istio_does_and_said():
    parsed = read(["-i", "10.0.0.0/8,", "-b", "80,,81"])
    assert [s.cidr_text(c) for c in parsed.spec.outbound_ip_ranges_include] == ["10.0.0.0/8"]
    assert parsed.spec.inbound_ports_include == (80, 81)
    assert parsed.warnings == (
        "--istio-inbound-ports/-b: empty item in '80,,81' skipped, as istio-iptables skips it",
        "--istio-service-cidr/-i: empty item in '10.0.0.0/8,' skipped, as istio-iptables skips it",
    )
    assert render_iptables(parsed.spec).text == render_iptables(args(["-i", "10.0.0.0/8", "-b", "80,81"])).text


def test_an_inbound_port_list_of_empty_items_is_refused():
    # istio-iptables tests -b's text: ',' would add its inbound jump with no port to capture.
    with pytest.raises(SpecError, match="no port in the list") as error:
        read(["-b", ","])
    assert (error.value.field, error.value.value) == ("--istio-inbound-ports/-b", ",")
    assert read(["-b", ""]).spec.inbound_ports_include == ()
    assert read(["-x", ","]).spec.outbound_ip_ranges_exclude == ()  # no rule depends on -x's text


def test_repeated_items_are_kept_as_istio_does_and_said():
    parsed = read(["-b", "8080,8080", "-u", "7,7"])
    assert parsed.spec.inbound_ports_include == (8080, 8080)
    assert render_iptables(parsed.spec).ipv4.count("--dport 8080 -j ISTIO_IN_REDIRECT") == 2
    assert parsed.warnings[0] == (
        "--proxy-uid/-u: 7 is listed 2 times; kept, as istio-iptables keeps it (its rules repeat)"
    )
    assert parsed.warnings[1].startswith("--proxy-gid/-g: 7 is listed 2 times")  # -g defaults to -u's text
    assert parsed.warnings[2].startswith("--istio-inbound-ports/-b: 8080 is listed 2 times")


def test_host_bits_are_written_as_given_as_istio_does_and_said():
    parsed = read(["-i", "10.0.0.1/8"])
    assert "-A ISTIO_OUTPUT -d 10.0.0.1/8 -j ISTIO_REDIRECT" in render_iptables(parsed.spec).ipv4
    assert parsed.warnings == (
        "--istio-service-cidr/-i: 10.0.0.1/8 has host bits set; written as given, as "
        "istio-iptables writes it (it matches 10.0.0.0/8)",
    )
    assert read(["-i", "10.0.0.0/8,2001:db8::/32"]).warnings == ()


def test_every_input_says_the_same_about_its_items():
    config = inputs.read_istio_config({"OutboundIPRangesInclude": "10.0.0.1/8,", "InboundPortsInclude": "80,80"})
    assert [w.split(":")[0] for w in config.warnings] == [
        "InboundPortsInclude",
        "OutboundIPRangesInclude",
        "OutboundIPRangesInclude",
    ]
    cni = pod(
        {
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.1/8",
            "traffic.sidecar.istio.io/includeInboundPorts": "80,80",
            "traffic.sidecar.istio.io/excludeInterfaces": "eth1,",
        }
    )
    assert [w.split(":")[0] for w in cni.warnings] == [
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "traffic.sidecar.istio.io/includeInboundPorts",
        "traffic.sidecar.istio.io/excludeInterfaces",
    ]
    _, warnings = inputs.spec_from_inputs((), None, None, None, "10.0.0.1,,10.0.0.1", "/nonexistent")
    assert warnings[:2] == [
        "--dns-servers: empty item in '10.0.0.1,,10.0.0.1' skipped, as istio-iptables skips it",
        "--dns-servers: 10.0.0.1 is listed 2 times; kept, as istio-iptables keeps it (its rules repeat)",
    ]


def test_an_empty_value_means_what_it_means_to_istio_iptables():
    # the option's default, where istio-iptables falls back to it
    assert args(["-m", ""]).inbound_interception_mode == "REDIRECT"
    assert args(["-u", "", "-g", ""]) == args([])
    assert args(["-u", "7", "-g", ""]).proxy_gids == (7,)
    assert args([], {"REDIRECT_DNS": "", "INVALID_DROP": ""}) == args([])
    assert args(["-b", "", "-i", "", "-x", "", "-k", "", "-c", "", "-q", "", "-o", "", "-d", ""]) == args([])
    # refused where istio-iptables would write "" into a rule the kernel's tools refuse
    for flag in ("-p", "-z", "-e", "-t", "-r"):
        with pytest.raises(SpecError) as error:
            args([flag, ""])
        assert error.value.field.endswith(f"/{flag}") and error.value.value == ""
    with pytest.raises(SpecError, match="not a boolean"):
        args(["--redirect-dns="])  # pflag refuses it too
    with pytest.raises(SpecError, match="not a CIDR"):
        args([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": ""})  # as istio-iptables' Validate does


def test_one_port_for_outbound_and_inbound_capture_is_refused_naming_both():
    with pytest.raises(SpecError) as error:
        args(["-p", "15001", "-z", "15001"])
    assert error.value.field == "--inbound-capture-port/-z"
    assert error.value.reason.startswith("the same port as --envoy-port/-p: ") and "loop" in error.value.reason
    with pytest.raises(SpecError, match="the same port as ProxyPort") as error:
        inputs.from_istio_config({"InboundCapturePort": "15001"})
    assert error.value.field == "InboundCapturePort"


def test_the_dns_proxy_port_cannot_take_captured_connections():
    with pytest.raises(SpecError, match="DNS proxy's port") as error:
        args(["-z", "15053", "--redirect-dns", "--capture-all-dns"])
    assert error.value.field == "--inbound-capture-port/-z" and "--redirect-dns" in error.value.reason
    assert args(["-p", "15053"]).proxy_port == 15053  # no DNS capture: nothing listens there for it


ONE_RULE_CASES = [
    (
        lambda: args([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(map(str, range(65)))}),
        "ISTIO_OUTBOUND_OWNER_GROUPS",
        dict(owner_groups_include=tuple(map(str, range(65)))),
    ),
    (lambda: inputs.from_istio_config({"DNSServersV4": ["::1"]}), "DNSServersV4", dict(dns_servers_v4=("::1",))),
    (lambda: args(["-m", "tproxy"]), "--istio-inbound-interception-mode/-m", dict(inbound_interception_mode="x")),
    (
        lambda: args([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.0/8"}),
        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
        dict(host_ipv4_loopback_cidr=parsers.parse_cidr("10.0.0.0/8", "x")),
    ),
    (lambda: args(["-p", "70000"]), "--envoy-port/-p", dict(proxy_port=70000)),
    (lambda: args(["-u", "4294967295"]), "--proxy-uid/-u", dict(proxy_uids=(2**32 - 1,))),
    (lambda: args(["-u", ","]), "--proxy-uid/-u", dict(proxy_uids=())),
    (lambda: args(["-t", "0"]), "--istio-inbound-tproxy-mark/-t", dict(inbound_tproxy_mark=0)),
    (lambda: args(["-c", "bad/name"]), "--istio-exclude-interfaces/-c", dict(exclude_interfaces=("bad/name",))),
    (
        lambda: args([], {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "no space"}),
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
        dict(owner_groups_exclude=("no space",)),
    ),
    (lambda: pod(proxy_runAsUser=2**32), "proxy_runAsUser", dict(proxy_uids=(2**32,))),
    (
        lambda: pod({"traffic.sidecar.istio.io/excludeOutboundPorts": "0"}),
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        dict(outbound_ports_exclude=(0,)),
    ),
]


@pytest.mark.parametrize(
    "read_input, field, direct", ONE_RULE_CASES, ids=[f"{i}:{case[1]}" for i, case in enumerate(ONE_RULE_CASES)]
)
def test_each_rule_is_checked_once_with_one_message(read_input, field, direct):
    """CaptureSpec checks the rule, whatever the input; the input only names the field as its user wrote it."""
    with pytest.raises(SpecError) as error:
        read_input()
    with pytest.raises(SpecError) as spec_error:
        CaptureSpec(**direct)
    assert error.value.field == field
    assert error.value.reason == spec_error.value.reason


# -- Istio config JSON ------------------------------------------------------------------


def test_config_absent_fields_take_cli_defaults():
    assert inputs.from_istio_config({}) == args([])


def test_config_errors_name_the_go_field():
    for config, field in [
        ({"ProxyPort": "70000"}, "ProxyPort"),
        ({"ProxyPorts": "1"}, "ProxyPorts"),
        ({"DNSServersV4": ["::1"]}, "DNSServersV4"),
        ({"EnableIPv6": "sure"}, "EnableIPv6"),
        ({"InboundInterceptionMode": "tproxy"}, "InboundInterceptionMode"),
    ]:
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
    spec = pod(
        {"traffic.sidecar.istio.io/excludeInboundPorts": "15021,8080"}, proxy_runAsUser=1000670000, proxy_runAsGroup=0
    ).spec
    assert spec.inbound_ports_exclude == (15021, 8080, 15020, 15090)
    assert spec.proxy_uids == (1000670000,) and spec.proxy_gids == (1337,)  # 0 means unset


def test_cni_dns_capture_is_capture_all():
    spec = pod(proxy_env={"ISTIO_META_DNS_CAPTURE": "true"}).spec
    assert spec.redirect_dns and spec.capture_all_dns and spec.dns_capture


def test_cni_reroute_interfaces_win_over_deprecated_key():
    spec = pod(
        {"istio.io/reroute-virtual-interfaces": "eth1", "traffic.sidecar.istio.io/kubevirtInterfaces": "eth2"}
    ).spec
    assert spec.kube_virt_interfaces == ("eth1",)
    assert pod({"traffic.sidecar.istio.io/kubevirtInterfaces": "eth2"}).spec.kube_virt_interfaces == ("eth2",)


def test_cni_ipv6_detection_from_pod_ips():
    assert pod(pod_ips=["fd00::5", "10.0.0.5"]).spec.enable_ipv6
    assert not pod(pod_ips=["10.0.0.5", "fd00::5"]).spec.enable_ipv6
    assert pod(pod_ips=["10.0.0.5", "fd00::5"], proxy_env={"ISTIO_DUAL_STACK": "true"}).spec.enable_ipv6
    assert not pod(pod_ips=["fe80::1", "10.0.0.5"]).spec.enable_ipv6  # link-local is skipped


@pytest.mark.parametrize(
    "document, field",
    [
        ({"annotations": {"sidecar.istio.io/interceptionMode": "NONE"}}, "sidecar.istio.io/interceptionMode"),
        (
            {"annotations": {"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/33"}},
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
        ),
        (
            {"annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "*"}},
            "traffic.sidecar.istio.io/excludeOutboundPorts",
        ),
        (
            {"annotations": {"traffic.sidecar.istio.io/excludeInterfaces": "bad name"}},
            "traffic.sidecar.istio.io/excludeInterfaces",
        ),
        ({"proxy_env": {"ISTIO_META_DNS_CAPTURE": "yes"}}, "proxy_env ISTIO_META_DNS_CAPTURE"),
        ({"proxy_runAsUser": "1000"}, "proxy_runAsUser"),
        ({"annotations": {}, "labels": {}}, "labels"),
    ],
)
def test_cni_bad_values_name_the_annotation(document, field):
    with pytest.raises(SpecError) as error:
        inputs.from_annotations(document)
    assert error.value.field == field


@pytest.mark.parametrize(
    "key, value",
    [
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8,"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", ",10.0.0.0/8"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "80,,81"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "80,"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", ","),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "443, "),
        ("status.sidecar.istio.io/port", "15020,"),
    ],
)
def test_cni_refuses_empty_items_in_port_and_cidr_annotations(key, value):
    # istio-cni's validators split these on ',' and parse every item, the empty one too.
    with pytest.raises(SpecError, match="empty item") as error:
        pod({key: value})
    assert (error.value.field, error.value.value) == (key, value)


def test_cni_warns_about_unmeshed_pods_and_unknown_traffic_annotations():
    result = inputs.from_annotations({"annotations": {"traffic.sidecar.istio.io/includeInboundPort": "80"}})
    assert any("sidecar.istio.io/status" in w for w in result.warnings)
    assert any("includeInboundPort " in w for w in result.warnings)


def test_the_stock_arguments_are_the_injectors():
    """accel's stock capture (the demo's, the benchmark's, the CNI default's) is the one Istio's
    reference records for a default sidecar, less its logging flag."""
    argv = [word for word in default_sidecar()["argv"][1:] if not word.startswith("--log_output_level")]
    assert list(inputs.ISTIO_INIT_DEFAULT_ARGS) == argv
