"""The capture model: parsers name the bad field; the spec refuses invalid values."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accel import spec as s
from accel.spec import CaptureSpec, SpecError


@pytest.mark.parametrize("parse, text, reason", [
    (s.parse_port, "70000", "out of range"),
    (s.parse_port, "0", "out of range"),
    (s.parse_port, "http", "not a port"),
    (s.parse_cidr, "10.0.0.0/33", "prefix length 33"),
    (s.parse_cidr, "2001:db8::/129", "prefix length 129"),
    (s.parse_cidr, "10.0.0.1", "expected address/prefix-length"),
    (s.parse_cidr, "10.0.0.0/255.0.0.0", "expected address/prefix-length"),
    (s.parse_cidr, "fe80::1%eth0/64", "expected address/prefix-length"),
    (s.parse_cidr, "300.1.1.1/8", "address part"),
    (s.parse_mode, "tproxy", "unknown interception mode"),
    (s.parse_mode, "NONE", "unknown interception mode"),
    (s.parse_interface, "a" * 16, "interface name"),
    (s.parse_interface, "eth/0", "interface name"),
    (s.parse_bool, "yes", "not a boolean"),
    (s.parse_loopback_cidr, "10.0.0.1/32", "loopback"),
    (s.parse_loopback_cidr, "127.0.0.1/7", "between 8 and 32"),
    (s.parse_group, "no spaces", "group name"),
])
def test_parsers_name_field_and_value(parse, text, reason):
    with pytest.raises(SpecError) as error:
        parse(text, "--the-flag")
    assert error.value.field == "--the-flag"
    assert error.value.value == text
    assert reason in str(error.value)


def test_list_parsers_follow_istio_split():
    assert s.parse_ports("6000,7000,", "f") == (6000, 7000)  # empty items dropped
    assert s.parse_ports("", "f") == ()
    assert s.parse_ports("*", "f", wildcard=True) == "*"
    with pytest.raises(SpecError, match="not allowed"):
        s.parse_ports("*", "f")
    with pytest.raises(SpecError, match="not allowed"):
        s.parse_cidrs("*", "-x")  # istio-iptables refuses -x '*' too
    assert s.parse_ids("3,4", "f", "uid") == (3, 4)
    with pytest.raises(SpecError, match="not a numeric uid"):
        s.parse_ids("1337,istio", "f", "uid")
    with pytest.raises(SpecError, match="at least one"):
        s.parse_ids("", "f", "uid")


def test_cidr_text_keeps_what_istio_emits():
    # Istio prints netip.Prefix.String(): host bits kept, IPv6 compressed, mapped IPv4 dotted.
    for text in ("10.96.0.1/24", "2001:db8::/32", "::ffff:1.2.3.4/128", "127.1.2.3/32"):
        assert s.cidr_text(s.parse_cidr(text, "f")) == text


def test_default_spec_is_istio_iptables_defaults():
    spec = CaptureSpec()
    assert (spec.proxy_port, spec.inbound_capture_port, spec.inbound_tunnel_port) == (15001, 15006, 15008)
    assert spec.proxy_uids == spec.proxy_gids == (1337,)
    assert not spec.captures_inbound and spec.outbound_ip_ranges_include == ()
    assert spec.owner_groups_include == "*"


@pytest.mark.parametrize("field, value", [
    ("proxy_port", 70000),
    ("proxy_port", True),
    ("proxy_uids", ()),
    ("proxy_uids", (-1,)),
    ("inbound_interception_mode", "NONE"),
    ("inbound_ports_include", (80, 0)),
    ("outbound_ip_ranges_include", ("10.0.0.0/8",)),  # must be parsed, not text
    ("owner_groups_include", tuple(str(g) for g in range(65))),
    ("dns_servers_v4", ("::1",)),
    ("inbound_tproxy_mark", 0),
])
def test_spec_refuses_invalid_values(field, value):
    with pytest.raises(SpecError) as error:
        CaptureSpec(**{field: value})
    assert error.value.field == field


def test_spec_is_immutable():
    spec = CaptureSpec()
    with pytest.raises(Exception):
        spec.proxy_port = 1


def test_dns_capture_needs_a_server_or_capture_all():
    assert not CaptureSpec(redirect_dns=True).dns_capture
    assert CaptureSpec(redirect_dns=True, capture_all_dns=True).dns_capture
    assert CaptureSpec(redirect_dns=True, dns_servers_v6=("::127.0.0.53",)).dns_capture
    assert not CaptureSpec(capture_all_dns=True).dns_capture
    assert any("DNS capture is off" in w for w in CaptureSpec(redirect_dns=True).warnings())


def test_derived_facts():
    spec = CaptureSpec(outbound_ip_ranges_include=s.parse_cidrs("10.0.0.0/8,2001:db8::/32,127.1.2.3/32", "f"))
    assert [s.cidr_text(c) for c in spec.outbound_include(4)] == ["10.0.0.0/8", "127.1.2.3/32"]
    assert [s.cidr_text(c) for c in spec.outbound_include(6)] == ["2001:db8::/32"]
    assert spec.include_has_loopback
    assert CaptureSpec(outbound_ip_ranges_include="*").outbound_include(6) == "*"


@given(st.ip_addresses(), st.data())
def test_any_cidr_round_trips_through_text(address, data):
    bits = data.draw(st.integers(0, address.max_prefixlen))
    text = f"{address}/{bits}"
    cidr = s.parse_cidr(text, "f")
    assert cidr == ipaddress.ip_interface(text)
    assert s.parse_cidr(s.cidr_text(cidr), "f") == cidr
