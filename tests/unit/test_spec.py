"""The capture model: parsers turn text into values, naming the bad field; the spec checks every rule
on the values, once, whatever the input."""

import dataclasses
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accel import spec as s
from accel.inputs import parsers
from accel.spec import CaptureSpec, SpecError


@pytest.mark.parametrize(
    "parse, text, reason",
    [
        (parsers.parse_port, "http", "not a port number"),
        (parsers.parse_port, "-1", "not a port number"),
        (parsers.parse_port, "\u00b9", "not a port number"),  # a digit to str.isdigit(), not to Go or int()
        (parsers.parse_cidr, "10.0.0.0/33", "prefix length 33"),
        (parsers.parse_cidr, "2001:db8::/129", "prefix length 129"),
        (parsers.parse_cidr, "10.0.0.1", "expected address/prefix-length"),
        (parsers.parse_cidr, "10.0.0.0/255.0.0.0", "expected address/prefix-length"),
        (parsers.parse_cidr, "fe80::1%eth0/64", "expected address/prefix-length"),
        (parsers.parse_cidr, "300.1.1.1/8", "address part"),
        (parsers.parse_cidr, "10.0.0.0/\u0663", "expected address/prefix-length"),
        (parsers.parse_address, "10.0.0.300", "not an IP address"),
        (parsers.parse_bool, "yes", "not a boolean"),
    ],
)
def test_parsers_name_field_and_value(parse, text, reason):
    with pytest.raises(SpecError) as error:
        parse(text, "--the-flag")
    assert error.value.field == "--the-flag"
    assert error.value.value == text
    assert reason in str(error.value)


def test_parsers_leave_the_rules_to_the_spec():
    assert parsers.parse_port("70000", "f") == 70000  # in range or not: CaptureSpec says
    assert parsers.parse_id("4294967295", "f", "uid") == 2**32 - 1
    assert parsers.parse_group("0202", "f") == "202"
    assert parsers.parse_mode("tproxy", "f") == "tproxy"
    assert parsers.parse_mode("", "f") == s.REDIRECT  # istio-iptables' -m default "" is REDIRECT


def test_list_parsers_follow_istio_split():
    assert parsers.parse_ports("6000,7000,", "f") == (6000, 7000)  # empty items dropped
    assert parsers.parse_ports("", "f") == ()
    assert parsers.parse_ports("*", "f", wildcard=True) == "*"
    with pytest.raises(SpecError, match="not allowed"):
        parsers.parse_ports("*", "f")
    with pytest.raises(SpecError, match="not allowed"):
        parsers.parse_cidrs("*", "-x")  # istio-iptables refuses -x '*' too
    assert parsers.parse_ids("3,4", "f", "uid") == (3, 4)
    assert parsers.parse_ids("", "f", "uid") == ()
    with pytest.raises(SpecError, match="not a numeric uid"):
        parsers.parse_ids("1337,istio", "f", "uid")


def test_cidr_text_keeps_what_istio_emits():
    # Istio prints netip.Prefix.String(): host bits kept, IPv6 compressed, mapped IPv4 dotted.
    for text in ("10.96.0.1/24", "2001:db8::/32", "::ffff:1.2.3.4/128", "127.1.2.3/32"):
        assert s.cidr_text(parsers.parse_cidr(text, "f")) == text


def test_address_text_is_gos_netip_string():
    for text, go in (
        ("2001:DB8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
        ("::127.0.0.53", "::7f00:35"),
        ("10.96.0.10", "10.96.0.10"),
    ):
        assert s.address_text(ipaddress.ip_address(text)) == go


def test_default_spec_is_istio_iptables_defaults():
    spec = CaptureSpec()
    assert (spec.proxy_port, spec.inbound_capture_port, spec.inbound_tunnel_port) == (15001, 15006, 15008)
    assert spec.proxy_uids == spec.proxy_gids == (1337,)
    assert not spec.captures_inbound and spec.outbound_ip_ranges_include == ()
    assert spec.owner_groups_include == "*"


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("proxy_port", 70000, "port out of range 1-65535"),
        ("proxy_port", 0, "port out of range 1-65535"),
        ("proxy_port", True, "port out of range"),
        ("proxy_uids", (), "at least one uid is required"),
        ("proxy_gids", (), "at least one gid is required"),
        ("proxy_uids", (-1,), "uid out of range"),
        ("proxy_gids", (2**32 - 1,), "gid out of range 0-4294967294"),
        ("inbound_interception_mode", "NONE", "unknown interception mode"),
        ("inbound_interception_mode", "tproxy", "unknown interception mode"),
        ("inbound_ports_include", (80, 0), "port out of range"),
        ("inbound_ports_exclude", "*", "wrong type"),
        ("outbound_ip_ranges_include", ("10.0.0.0/8",), "wrong type"),  # must be parsed, not text
        ("outbound_ip_ranges_exclude", "*", "wrong type"),
        ("owner_groups_include", tuple(str(g) for g in range(65)), "at most 64 groups"),
        ("owner_groups_exclude", ("no spaces",), "not a group name"),
        ("owner_groups_exclude", ("4294967295",), "gid out of range"),
        ("exclude_interfaces", ("a" * 16,), "interface name"),
        ("kube_virt_interfaces", ("eth/0",), "interface name"),
        ("dns_servers_v4", ("::1",), "not an IPv4 address"),
        ("dns_servers_v6", ("not-an-ip",), "not an IP address"),
        ("dns_servers_v4", (" 10.0.0.1",), "not an IP address"),  # written into rules as it is
        ("dns_servers_v6", ("fe80::1%eth0",), "zone"),
        ("inbound_tproxy_mark", 0, "packet mark out of range 1-4294967295"),
        ("inbound_tproxy_route_table", 2**32, "route table out of range"),
        ("host_ipv4_loopback_cidr", parsers.parse_cidr("10.0.0.1/32", "f"), "loopback"),
        ("host_ipv4_loopback_cidr", parsers.parse_cidr("127.0.0.1/7", "f"), "8 to 32"),
        ("host_ipv4_loopback_cidr", parsers.parse_cidr("::1/128", "f"), "IPv4 loopback"),
    ],
)
def test_spec_refuses_invalid_values(field, value, reason):
    with pytest.raises(SpecError) as error:
        CaptureSpec(**{field: value})
    assert error.value.field == field
    assert reason in error.value.reason


def test_one_port_for_outbound_and_inbound_capture_is_a_loop():
    with pytest.raises(SpecError) as error:
        CaptureSpec(proxy_port=15001, inbound_capture_port=15001)
    assert error.value.field == "inbound_capture_port" and error.value.related == ("proxy_port",)
    assert "the same port as proxy_port" in error.value.reason and "loop" in error.value.reason
    # the tunnel port only exempts: no rule sends anything to it
    CaptureSpec(inbound_tunnel_port=15001)
    CaptureSpec(inbound_tunnel_port=15006)


def test_the_dns_proxy_port_is_taken_under_dns_capture():
    dns = dict(redirect_dns=True, capture_all_dns=True)
    for field in ("proxy_port", "inbound_capture_port"):
        with pytest.raises(SpecError, match="DNS proxy's port") as error:
            CaptureSpec(**{field: 15053}, **dns)
        assert error.value.field == field and error.value.related == ("redirect_dns",)
        CaptureSpec(**{field: 15053})  # no DNS capture, no DNS proxy listening there
    CaptureSpec(inbound_tunnel_port=15053, **dns)


def test_relabel_names_fields_as_the_input_does():
    error = SpecError("inbound_capture_port", "15001", "the same port as proxy_port", ("proxy_port",))
    named = error.relabel({"inbound_capture_port": "-z", "proxy_port": "-p"})
    assert str(named) == "-z: the same port as -p (got '15001')"
    assert named.related == ("-p",)
    assert str(error.relabel({})) == str(error)


def test_spec_is_immutable():
    spec = CaptureSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.proxy_port = 1


def test_dns_capture_needs_a_server_or_capture_all():
    assert not CaptureSpec(redirect_dns=True).dns_capture
    assert CaptureSpec(redirect_dns=True, capture_all_dns=True).dns_capture
    assert CaptureSpec(redirect_dns=True, dns_servers_v6=("::127.0.0.53",)).dns_capture
    assert not CaptureSpec(capture_all_dns=True).dns_capture
    assert any("DNS capture is off" in w for w in CaptureSpec(redirect_dns=True).warnings())


def test_an_empty_owner_group_include_list_is_said():
    assert any("no outbound traffic is captured" in w for w in CaptureSpec(owner_groups_include=()).warnings())
    assert not CaptureSpec().warnings()


def test_derived_facts():
    spec = CaptureSpec(outbound_ip_ranges_include=parsers.parse_cidrs("10.0.0.0/8,2001:db8::/32,127.1.2.3/32", "f"))
    assert [s.cidr_text(c) for c in spec.outbound_include(4)] == ["10.0.0.0/8", "127.1.2.3/32"]
    assert [s.cidr_text(c) for c in spec.outbound_include(6)] == ["2001:db8::/32"]
    assert spec.include_has_loopback
    assert CaptureSpec(outbound_ip_ranges_include="*").outbound_include(6) == "*"


@given(st.ip_addresses(), st.data())
def test_any_cidr_round_trips_through_text(address, data):
    bits = data.draw(st.integers(0, address.max_prefixlen))
    text = f"{address}/{bits}"
    cidr = parsers.parse_cidr(text, "f")
    assert cidr == ipaddress.ip_interface(text)
    assert parsers.parse_cidr(s.cidr_text(cidr), "f") == cidr
