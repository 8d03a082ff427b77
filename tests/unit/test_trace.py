"""accel.trace: a packet tracer over accel's own renderings (iptables-restore text, nft transaction).

Expected verdicts below are read off the rules' meaning (shared/research/istio-capture.md section 4
and 9), not recorded from the tracer. Each is checked against all three renderings of its spec,
so the table is also a comparison of iptables, nftables and nftables with sets.
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accel import constants as c
from accel import inputs
from accel.render import render_iptables, render_nftables
from accel.spec import CaptureSpec, SpecError
from accel.trace import (
    DROPPED,
    TPROXY,
    UNTOUCHED,
    Flow,
    IptablesTracer,
    Kind,
    NftablesTracer,
    TraceError,
    Verdict,
    trace_iptables,
    trace_nftables,
)
from tests import flows
from tests.flows import APP, EPHEMERAL, PASSTHROUGH, POD, PROXY, grid, inb, out, proxy
from tests.reference import CASE_GROUPS, PROBE_LINES, REFERENCE, golden_cases
from tests.strategies import capture_specs

OUT = Verdict.outbound(c.PROXY_PORT)
IN = Verdict.inbound(c.INBOUND_CAPTURE_PORT)
IN_TPROXY = Verdict.inbound(c.INBOUND_CAPTURE_PORT, TPROXY)
DNS = Verdict.dns(c.DNS_PROXY_PORT)
NONE = UNTOUCHED


# -- specs --------------------------------------------------------------------------------------

STOCK = list(inputs.ISTIO_INIT_DEFAULT_ARGS)  # -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d ...
SPECS = {  # name -> (extra istio-iptables args after the stock ones, env, from_istio_args keywords)
    "stock": ([], {}, {}),
    "stock-ipv6": ([], {}, {"enable_ipv6": True}),
    "tproxy": (["-m", "TPROXY"], {}, {}),
    "tproxy-ipv6": (["-m", "TPROXY"], {}, {"enable_ipv6": True}),
    "dns": (["--redirect-dns"], {}, {"dns_servers": ["10.96.0.10", "127.0.0.53"]}),
    "dns-all": (["--redirect-dns", "--capture-all-dns"], {}, {}),
    "dns-tproxy-ipv6": (
        ["--redirect-dns", "-m", "TPROXY"],
        {},
        {"dns_servers": ["10.96.0.10", "fd00:96::10"], "enable_ipv6": True},
    ),
    "cidrs": (
        ["-i", "10.0.0.0/8,fd00::/8", "-x", "10.96.0.0/12,fd00:96::/32", "-q", "3306"],
        {},
        {"enable_ipv6": True},
    ),
    "loopback-include": (["-i", "127.0.0.0/8,10.1.0.0/16"], {}, {}),
    "host-loopback-8": ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"}, {}),
    "exclude-ports": (["-o", "5432,9000"], {}, {}),
    "inbound-ports": (["-b", "8080,9090"], {}, {}),
    "inbound-ports-tproxy": (["-b", "8080,9090", "-m", "TPROXY"], {}, {}),
    "uids": (["-u", "3,4", "-g", "1,2"], {}, {}),
    "groups-include": ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"}, {}),
    "groups-exclude": ([], {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp"}, {}),
    "exclude-nic": (["-c", "eth1"], {}, {}),
    "exclude-nic-tproxy": (["-c", "eth1", "-m", "TPROXY"], {}, {}),
    "virt": (["-k", "veth0"], {}, {}),
    "virt-cidr": (["-k", "veth0", "-i", "10.0.0.0/8"], {}, {}),
    "virt-tproxy": (["-k", "veth0", "-m", "TPROXY"], {}, {}),
    "drop-invalid": (["--drop-invalid"], {}, {}),
}


@cache
def spec(name: str) -> CaptureSpec:
    extra, env, keywords = SPECS[name]
    return inputs.from_istio_args(STOCK + extra, env, **keywords)


@cache
def tracers(subject: str | CaptureSpec) -> dict[str, IptablesTracer | NftablesTracer]:
    return flows.tracers(spec(subject) if isinstance(subject, str) else subject)


JAVA, FTP = CASE_GROUPS["java"], CASE_GROUPS["ftp"]
TUNNEL = c.INBOUND_TUNNEL_PORT

# (spec, what, flow, verdict)
TABLE = [
    # -- the stock istio-init capture ----------------------------------------------------------
    ("stock", "app TCP out", out("10.96.0.10", 80), OUT),
    ("stock", "app TCP to any port, even the proxy's", out("1.1.1.1", c.PROXY_PORT), OUT),
    ("stock", "app UDP out: ISTIO_REDIRECT is TCP only", out("10.96.0.10", 80, protocol="udp"), NONE),
    ("stock", "proxy uid out", proxy("10.96.0.10", 80), NONE),
    ("stock", "any uid with the proxy's gid", out("10.96.0.10", 80, gid=c.PROXY_GID), NONE),
    ("stock", "app to 127.0.0.1", out("127.0.0.1", 8080), NONE),
    ("stock", "app to its own pod IP over lo", out(POD[4], 8080), NONE),
    ("stock", "proxy to its own pod over lo: inbound listener", proxy(POD[4], 8080), IN),
    ("stock", "proxy to 127.0.0.1 over lo", proxy("127.0.0.1", 8080), NONE),
    ("stock", "proxy to its pod's tunnel port", proxy(POD[4], TUNNEL), NONE),
    ("stock", "proxy's passthrough from 127.0.0.6", proxy(POD[4], 8080, src=PASSTHROUGH[4]), NONE),
    (
        "stock",
        "uid 0 in the proxy's group over lo: the uid rule's lo RETURN shadows the gid hairpin",
        out(POD[4], 8080, uid=0, gid=c.PROXY_GID),
        NONE,
    ),
    ("stock", "inbound TCP", inb(8080), IN),
    ("stock", "inbound TCP to the capture port itself", inb(c.INBOUND_CAPTURE_PORT), IN),
    ("stock", "inbound to Envoy's metrics port", inb(c.ENVOY_METRICS_PORT), NONE),
    ("stock", "inbound to the health port", inb(c.HEALTH_PORT), NONE),
    ("stock", "inbound to the merged metrics port", inb(c.MERGED_METRICS_PORT), NONE),
    ("stock", "inbound to the tunnel port", inb(TUNNEL), NONE),
    ("stock", "inbound UDP", inb(8080, protocol="udp"), NONE),
    ("stock", "inbound on an interface named nowhere", inb(8080, interface="eth0"), IN),
    # -- IPv6 -----------------------------------------------------------------------------------
    ("stock-ipv6", "app TCP out", out("2001:db8::1", 80), OUT),
    ("stock-ipv6", "app UDP out", out("2001:db8::1", 80, protocol="udp"), NONE),
    ("stock-ipv6", "app to ::1", out("::1", 8080), NONE),
    ("stock-ipv6", "proxy to its own pod over lo", proxy(POD[6], 8080), IN),
    ("stock-ipv6", "proxy's passthrough from ::6", proxy(POD[6], 8080, src=PASSTHROUGH[6], lo=True), NONE),
    ("stock-ipv6", "proxy to ::1", proxy("::1", 8080), NONE),
    ("stock-ipv6", "inbound TCP", inb(8080, version=6), IN),
    ("stock-ipv6", "inbound to the health port", inb(c.HEALTH_PORT, version=6), NONE),
    ("stock-ipv6", "IPv4 still captured", out("10.96.0.10", 80), OUT),
    # -- TPROXY ---------------------------------------------------------------------------------
    ("tproxy", "inbound TCP", inb(8080), IN_TPROXY),
    ("tproxy", "inbound to the health port", inb(c.HEALTH_PORT), NONE),
    ("tproxy", "inbound to the tunnel port: no exemption in mangle", inb(TUNNEL), IN_TPROXY),
    ("tproxy", "inbound UDP", inb(8080, protocol="udp"), NONE),
    ("tproxy", "arriving by lo unmarked", inb(8080, src=POD[4], lo=True), NONE),
    (
        "tproxy",
        "arriving by lo with the proxy's hairpin mark",
        inb(8080, src=POD[4], lo=True, mark=c.OUTBOUND_MARK),
        IN_TPROXY,
    ),
    (
        "tproxy",
        "arriving by lo from 127.0.0.6, hairpin mark",
        inb(8080, src=PASSTHROUGH[4], lo=True, mark=c.OUTBOUND_MARK),
        NONE,
    ),
    ("tproxy", "arriving already carrying the TPROXY mark", inb(8080, src=POD[4], lo=True, mark=c.TPROXY_MARK), NONE),
    ("tproxy", "app TCP out (back in by lo, unmarked: not re-captured)", out("10.96.0.10", 80), OUT),
    ("tproxy", "proxy to its own pod: nat hairpin, mangle then sees 127.0.0.1", proxy(POD[4], 8080), IN),
    (
        "tproxy",
        "proxy to its pod's tunnel port: nat lets it be, mangle marks it 1338, TPROXY takes it",
        proxy(POD[4], TUNNEL),
        IN_TPROXY,
    ),
    (
        "tproxy",
        "proxy's original_src socket (mark 1337) to the tunnel port",
        proxy(POD[4], TUNNEL, mark=c.TPROXY_MARK),
        NONE,
    ),
    ("tproxy", "app to its own pod over lo", out(POD[4], 8080), NONE),
    ("tproxy", "proxy's passthrough from 127.0.0.6", proxy(POD[4], 8080, src=PASSTHROUGH[4]), NONE),
    ("tproxy-ipv6", "inbound TCP", inb(8080, version=6), IN_TPROXY),
    ("tproxy-ipv6", "proxy to its pod's tunnel port", proxy(POD[6], TUNNEL), IN_TPROXY),
    ("tproxy-ipv6", "proxy's passthrough from ::6", proxy(POD[6], 8080, src=PASSTHROUGH[6], lo=True), NONE),
    # -- DNS capture (--redirect-dns, nameservers 10.96.0.10 and 127.0.0.53) ---------------------
    ("dns", "app UDP to a nameserver", out("10.96.0.10", 53, protocol="udp"), DNS),
    ("dns", "app TCP to a nameserver", out("10.96.0.10", 53), DNS),
    ("dns", "app UDP to the loopback resolver", out("127.0.0.53", 53, protocol="udp"), DNS),
    ("dns", "app UDP/53 elsewhere: not a nameserver", out("8.8.8.8", 53, protocol="udp"), NONE),
    ("dns", "app TCP/53 elsewhere: ordinary outbound", out("8.8.8.8", 53), OUT),
    ("dns", "proxy UDP to a nameserver", proxy("10.96.0.10", 53, protocol="udp"), NONE),
    ("dns", "proxy TCP to its own pod's port 53 (multiport ! 53,15008)", proxy(POD[4], 53), NONE),
    ("dns", "proxy TCP to its own pod", proxy(POD[4], 8080), IN),
    ("dns", "app TCP/53 to its own pod: the lo RETURN spares port 53", out(POD[4], 53), OUT),
    (
        "dns",
        "app UDP to its own pod: the lo RETURN is TCP only, ISTIO_REDIRECT too",
        out(POD[4], 8080, protocol="udp"),
        NONE,
    ),
    ("dns", "app TCP to its own pod", out(POD[4], 8080), NONE),
    ("dns", "inbound UDP answer from a nameserver", inb(EPHEMERAL, src="10.96.0.10", sport=53, protocol="udp"), NONE),
    ("dns-all", "app UDP/53 anywhere", out("8.8.8.8", 53, protocol="udp"), DNS),
    ("dns-all", "app TCP/53 anywhere", out("8.8.8.8", 53), DNS),
    ("dns-all", "proxy UDP/53", proxy("8.8.8.8", 53, protocol="udp"), NONE),
    ("dns-tproxy-ipv6", "app UDP to the IPv6 nameserver", out("fd00:96::10", 53, protocol="udp"), DNS),
    ("dns-tproxy-ipv6", "app UDP to another IPv6 address", out("2001:db8::53", 53, protocol="udp"), NONE),
    ("dns-tproxy-ipv6", "inbound TCP", inb(8080, version=6), IN_TPROXY),
    # -- include/exclude CIDRs, outbound ports ----------------------------------------------------
    ("cidrs", "included", out("10.1.2.3", 80), OUT),
    ("cidrs", "excluded beats included", out("10.96.0.10", 80), NONE),
    ("cidrs", "not included", out("192.168.1.1", 80), NONE),
    ("cidrs", "-q port captured whatever the destination", out("192.168.1.1", 3306), OUT),
    ("cidrs", "-x beats -q", out("10.96.0.10", 3306), NONE),
    ("cidrs", "included UDP", out("10.1.2.3", 80, protocol="udp"), NONE),
    ("cidrs", "IPv6 included", out("fd00:1::1", 80), OUT),
    ("cidrs", "IPv6 excluded", out("fd00:96::10", 80), NONE),
    ("cidrs", "IPv6 not included", out("2001:db8::1", 80), NONE),
    ("cidrs", "IPv6 -q port", out("2001:db8::1", 3306), OUT),
    ("loopback-include", "a loopback -i drops the lo RETURN: app to its own pod", out(POD[4], 8080), OUT),
    ("loopback-include", "app to 127.0.0.5", out("127.0.0.5", 8080), OUT),
    ("loopback-include", "app to 127.0.0.1 (host loopback RETURN)", out("127.0.0.1", 8080), NONE),
    ("loopback-include", "proxy to its own pod", proxy(POD[4], 8080), IN),
    ("loopback-include", "not included", out("192.168.1.1", 80), NONE),
    ("stock", "proxy to 127.0.0.5: outside the default host loopback 127.0.0.1/32", proxy("127.0.0.5", 8080), IN),
    ("host-loopback-8", "proxy to 127.0.0.5 within 127.0.0.1/8", proxy("127.0.0.5", 8080), NONE),
    ("exclude-ports", "excluded TCP port", out("10.96.0.10", 5432), NONE),
    ("exclude-ports", "excluded port, UDP", out("10.96.0.10", 9000, protocol="udp"), NONE),
    ("exclude-ports", "another port", out("10.96.0.10", 5433), OUT),
    ("exclude-ports", "the exclusion comes before the proxy's hairpin", proxy(POD[4], 5432), NONE),
    ("exclude-ports", "-o is outbound only", inb(5432), IN),
    ("inbound-ports", "a listed port", inb(9090), IN),
    ("inbound-ports", "an unlisted port", inb(8081), NONE),
    ("inbound-ports", "-d is not applied with a port list: health port unlisted", inb(c.HEALTH_PORT), NONE),
    ("inbound-ports-tproxy", "a listed port", inb(8080), IN_TPROXY),
    ("inbound-ports-tproxy", "an unlisted port", inb(8081), NONE),
    # -- uid/gid lists, owner groups -------------------------------------------------------------
    ("uids", "first proxy uid", out("10.96.0.10", 80, uid=3, gid=APP), NONE),
    ("uids", "second proxy uid", out("10.96.0.10", 80, uid=4, gid=APP), NONE),
    ("uids", "second proxy gid", out("10.96.0.10", 80, uid=APP, gid=2), NONE),
    ("uids", "1337 is not exempt when not listed", out("10.96.0.10", 80, uid=PROXY, gid=c.PROXY_GID), OUT),
    ("uids", "first proxy uid to its own pod", out(POD[4], 8080, uid=3, gid=APP), IN),
    (
        "uids",
        "second proxy uid to its own pod: the first uid's lo RETURN shadows it",
        out(POD[4], 8080, uid=4, gid=APP),
        NONE,
    ),
    ("groups-include", "primary gid listed (number)", out("10.96.0.10", 80, gid=202), OUT),
    ("groups-include", "primary gid listed (name)", out("10.96.0.10", 80, gid=JAVA), OUT),
    ("groups-include", "primary gid not listed", out("10.96.0.10", 80), NONE),
    (
        "groups-include",
        "listed only as a supplementary group: does not count",
        out("10.96.0.10", 80, groups=(202, JAVA)),
        NONE,
    ),
    ("groups-exclude", "primary gid excluded (number)", out("10.96.0.10", 80, gid=888), NONE),
    ("groups-exclude", "primary gid excluded (name)", out("10.96.0.10", 80, gid=FTP), NONE),
    ("groups-exclude", "other gid", out("10.96.0.10", 80), OUT),
    (
        "groups-exclude",
        "excluded only as a supplementary group: still captured",
        out("10.96.0.10", 80, groups=(888, FTP)),
        OUT,
    ),
    # -- interfaces ------------------------------------------------------------------------------
    ("exclude-nic", "out by the excluded interface", out("10.96.0.10", 80, interface="eth1"), NONE),
    ("exclude-nic", "out by another", out("10.96.0.10", 80, interface="eth0"), OUT),
    ("exclude-nic", "in by the excluded interface", inb(8080, interface="eth1"), NONE),
    ("exclude-nic", "in by another", inb(8080, interface="eth0"), IN),
    ("exclude-nic-tproxy", "in by the excluded interface", inb(8080, interface="eth1"), NONE),
    ("exclude-nic-tproxy", "in by another", inb(8080, interface="eth0"), IN_TPROXY),
    ("virt", "in by a virtual interface: to the outbound listener", inb(80, dst="10.96.0.10", interface="veth0"), OUT),
    ("virt", "in by a virtual interface to the pod", inb(8080, interface="veth0"), OUT),
    ("virt", "in by a virtual interface, UDP", inb(80, dst="10.96.0.10", interface="veth0", protocol="udp"), NONE),
    ("virt", "in by another interface", inb(8080, interface="eth0"), IN),
    ("virt-cidr", "in by a virtual interface, included", inb(80, dst="10.96.0.10", interface="veth0"), OUT),
    (
        "virt-cidr",
        "in by a virtual interface, not included: RETURN",
        inb(80, dst="192.168.1.1", interface="veth0"),
        NONE,
    ),
    ("virt-tproxy", "TPROXY's socket beats nat's REDIRECT", inb(8080, interface="veth0"), IN_TPROXY),
    # -- drop invalid: a NEW connection is never INVALID -----------------------------------------
    ("drop-invalid", "inbound TCP", inb(8080), IN),
    ("drop-invalid", "inbound UDP", inb(8080, protocol="udp"), NONE),
    ("drop-invalid", "app TCP out", out("10.96.0.10", 80), OUT),
]


@pytest.mark.parametrize("name, what, flow, expected", TABLE, ids=[f"{row[0]}: {row[1]}" for row in TABLE])
@pytest.mark.parametrize("rendering", ["iptables", "nftables", "nftables-sets"])
def test_expected_verdicts(rendering, name, what, flow, expected):
    verdict = tracers(name)[rendering].trace(flow)
    assert verdict == expected, "\n".join(verdict.path)


@pytest.mark.parametrize(
    "flow, zone",
    [
        (out("10.96.0.10", 53, protocol="udp"), 2),  # an app's query
        (proxy("10.96.0.10", 53, protocol="udp"), 1),  # the proxy's upstream query: the uid rule comes first and wins
        (proxy(POD[4], EPHEMERAL, sport=c.DNS_PROXY_PORT, protocol="udp"), 2),  # the DNS proxy's answer
        (out("8.8.8.8", 53, protocol="udp"), None),  # not a nameserver
        (out("10.96.0.10", 53), None),  # the zones are for UDP
        (inb(EPHEMERAL, src="10.96.0.10", sport=53, protocol="udp"), 1),  # an upstream answer
        (inb(EPHEMERAL, src="8.8.8.8", sport=53, protocol="udp"), None),
    ],
)
@pytest.mark.parametrize("rendering", ["iptables", "nftables", "nftables-sets"])
def test_dns_conntrack_zones(rendering, flow, zone):
    """Understood, never a verdict: the first CT template wins (xt_CT and nft_ct leave a packet
    that has one alone)."""
    assert tracers("dns")[rendering].trace(flow).ct_zone == zone


def test_the_path_names_the_rules_taken():
    verdict = tracers("stock")["iptables"].trace(proxy(POD[4], 8080))
    assert [step.split(": ", 1)[1] for step in verdict.path] == [
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    ]
    assert str(verdict) == f"inbound {c.INBOUND_CAPTURE_PORT} (REDIRECT)"


# -- flows on a grid: iptables, nftables and nftables with sets agree ---------------------------


def assert_agree(named: dict, flows: list[Flow]):
    disagreements = []
    for flow in flows:
        verdicts = {name: tracer.trace(flow) for name, tracer in named.items()}
        first = next(iter(verdicts.values()))
        if any(v != first or v.ct_zone != first.ct_zone for v in verdicts.values()):
            disagreements.append((flow, {name: (str(v), v.ct_zone) for name, v in verdicts.items()}))
    assert disagreements == [], f"{len(disagreements)} of {len(flows)} flows disagree, e.g. {disagreements[:3]}"


OPTION_SPECS = sorted(SPECS)
CASES = [case for case in golden_cases() if case.suite in ("iptables", "cni-sidecar")]


@pytest.mark.parametrize("name", OPTION_SPECS)
def test_renderings_agree_on_a_grid_option_specs(name):
    assert_agree(tracers(name), grid(spec(name)))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_renderings_agree_on_a_grid_istio_cases(case):
    assert_agree(tracers(case.spec), grid(case.spec))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capture_specs, st.randoms(use_true_random=False))
def test_renderings_agree_for_any_spec(any_spec, rng):
    every = grid(any_spec)
    assert_agree(tracers(any_spec), rng.sample(every, min(len(every), 60)))


def test_known_difference_ipv6_on_an_ipv4_pod():
    """On a pod without IPv6 istio-iptables writes no ip6tables rules, while the nftables rule set
    (family inet, as Istio's) has family-less jumps: its IPv6 TCP is captured by nftables only."""
    named = tracers("stock")
    for flow, nft in ((out("2001:db8::1", 80), OUT), (inb(8080, version=6), IN)):
        assert named["iptables"].trace(flow) == NONE
        assert named["nftables"].trace(flow) == named["nftables-sets"].trace(flow) == nft


@pytest.mark.parametrize(
    "nic, flow_nic, excluded",
    [
        ("eth+", "eth0", True),
        ("eth+", "veth0", False),
        ("eth0", "eth0", True),
        ("eth0", "eth01", False),
        ("+", "eth0", True),
    ],
)
def test_interface_prefixes_mean_the_same_in_both_renderings(nic, flow_nic, excluded):
    """iptables reads a trailing + as 'every name with this prefix'; the nftables rendering
    writes it as nft's trailing * (found by this tracer: it once wrote "eth+" literally), and a
    + alone, which nft would refuse as "*", as no interface match at all (found in the kernel)."""
    named = tracers(inputs.from_istio_args(STOCK + ["-c", nic], {}))
    flow = out("10.96.0.10", 80, interface=flow_nic)
    verdicts = {name: tracer.trace(flow) for name, tracer in named.items()}
    assert len(set(verdicts.values())) == 1, verdicts
    assert (verdicts["iptables"] == UNTOUCHED) == excluded


def test_a_star_in_an_interface_name_is_refused():
    """iptables reads '*' as itself and nftables as a wildcard: no rendering could mean one thing."""
    with pytest.raises(SpecError, match=r"'\*' in an interface name"):
        inputs.from_istio_args(STOCK + ["-c", "eth*"], {})


# -- Istio's goldens ----------------------------------------------------------------------------


def _golden_text(path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line not in PROBE_LINES)


GOLDEN_FILES = sorted(
    p.relative_to(REFERENCE).as_posix()
    for pattern in (
        "iptables/*.golden",
        "nftables/*.golden",
        "cni-sidecar/*.golden",
        "derived/*.golden",
        "derived/*.restore",
        "derived/*.nft",
    )
    for p in REFERENCE.glob(pattern)
)
SAMPLE = [
    out("10.96.0.10", 80),
    out("10.96.0.10", 53, protocol="udp"),
    proxy(POD[4], 8080),
    out(POD[4], 8080),
    proxy(POD[4], 8080, src=PASSTHROUGH[4]),
    inb(8080),
    inb(TUNNEL),
    inb(EPHEMERAL, sport=53, protocol="udp"),
    inb(8080, src=POD[4], lo=True, mark=c.OUTBOUND_MARK),
    out("2001:db8::1", 80),
    proxy(POD[6], 8080),
    inb(8080, version=6),
    out("10.96.0.10", 80, gid=JAVA, interface="not-istio-nic"),
]


def test_every_golden_file_is_here():
    assert len(GOLDEN_FILES) == 27 + 28 + 8 + 2 + 2 + 2


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_every_istio_golden_traces(name):
    path = REFERENCE / name
    nft = name.startswith("nftables/") or name.endswith(".nft")
    tracer = (NftablesTracer if nft else IptablesTracer)(_golden_text(path), group_ids=CASE_GROUPS)
    verdicts = [tracer.trace(flow) for flow in SAMPLE]
    assert all(isinstance(v, Verdict) for v in verdicts)


@pytest.mark.parametrize("name", sorted({case.name for case in golden_cases() if case.suite == "iptables"}))
def test_istios_own_goldens_agree(name):
    """Istio's iptables golden and its nftables golden of one case capture the same flows."""
    case = next(case for case in golden_cases() if case.suite == "iptables" and case.name == name)
    named = {
        "iptables": IptablesTracer(_golden_text(REFERENCE / "iptables" / f"{name}.golden"), group_ids=CASE_GROUPS),
        "nftables": NftablesTracer(_golden_text(REFERENCE / "nftables" / f"{name}.golden"), group_ids=CASE_GROUPS),
    }
    assert_agree(named, grid(case.spec))


def test_the_stock_golden_is_the_stock_spec():
    """The derived default-sidecar rules (Istio's, by hand from run.go) trace as accel's own."""
    v4 = IptablesTracer((REFERENCE / "derived/default-sidecar.v4.restore").read_text())
    nft = NftablesTracer((REFERENCE / "derived/default-sidecar.nft").read_text())
    named = {"golden-iptables": v4, "golden-nftables": nft, **tracers("stock")}
    assert_agree(named, grid(spec("stock")))


# -- semantics on small hand-written rule sets --------------------------------------------------

CONTROL_IPTABLES = f"""* nat
-N X
-N Y
-N Z
-N {c.CHAIN_REDIRECT}
-A {c.CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports {c.PROXY_PORT}
-A OUTPUT -p tcp --dport 5 -j RETURN
-A OUTPUT -j X
-A OUTPUT -p tcp -j {c.CHAIN_REDIRECT}
-A X -p tcp --dport 1 -j RETURN
-A X -p tcp --dport 2 -j ACCEPT
-A X -p tcp --dport 3 -g Y
-A X -p tcp --dport 3 -j ACCEPT
-A X -p tcp --dport 6 -j Z
-A X -p tcp --dport 6 -j ACCEPT
-A Y -p tcp --dport 3 -j RETURN
-A Z -p tcp --dport 6 -j RETURN
COMMIT
"""
CONTROL_NFTABLES = f"""add table inet t
add chain inet t output {{ type nat hook output priority -100 ; }}
add chain inet t x
add chain inet t y
add chain inet t z
add chain inet t {c.NFT_CHAIN_REDIRECT}
add rule inet t {c.NFT_CHAIN_REDIRECT} meta l4proto tcp counter redirect to :{c.PROXY_PORT}
add rule inet t output tcp dport 5 return
add rule inet t output jump x
add rule inet t output meta l4proto tcp jump {c.NFT_CHAIN_REDIRECT}
add rule inet t x tcp dport 1 return
add rule inet t x tcp dport 2 accept
add rule inet t x tcp dport 3 goto y
add rule inet t x tcp dport 3 accept
add rule inet t x tcp dport 6 jump z
add rule inet t x tcp dport 6 accept
add rule inet t y tcp dport 3 return
add rule inet t z tcp dport 6 return
"""


@pytest.mark.parametrize(
    "port, expected",
    [
        (1, OUT),  # RETURN from a user chain: back to the caller, which goes on
        (2, NONE),  # ACCEPT in a user chain ends the base chain
        (3, OUT),  # goto: the target's RETURN goes back to the caller of the chain holding the goto
        (4, OUT),  # falling off a user chain returns
        (5, NONE),  # RETURN in a base chain: its policy, accept
        (6, NONE),  # a nested RETURN goes back into the chain that jumped
    ],
)
@pytest.mark.parametrize("kind", ["iptables", "nftables"])
def test_jump_goto_return(kind, port, expected):
    text, trace = (CONTROL_IPTABLES, trace_iptables) if kind == "iptables" else (CONTROL_NFTABLES, trace_nftables)
    assert trace(text, out("10.96.0.10", port)) == expected
    assert trace(text, out("10.96.0.10", port, protocol="udp")) == NONE  # falls off the base chain


def test_drop_is_its_own_verdict():
    iptables = f"* mangle\n-N {c.CHAIN_DROP}\n-A PREROUTING -j {c.CHAIN_DROP}\n-A {c.CHAIN_DROP} -j DROP\nCOMMIT\n"
    nftables = (
        f"add table inet m\nadd chain inet m prerouting {{ type filter hook prerouting priority -150 ; }}\n"
        f"add chain inet m {c.NFT_CHAIN_DROP}\nadd rule inet m prerouting counter jump {c.NFT_CHAIN_DROP}\n"
        f"add rule inet m {c.NFT_CHAIN_DROP} counter drop\n"
    )
    assert trace_iptables(iptables, inb(8080)) == trace_nftables(nftables, inb(8080)) == DROPPED
    assert DROPPED.kind is Kind.DROP


def test_no_ipv6_rules_capture_no_ipv6():
    rules = render_iptables(spec("stock"))
    assert rules.ipv6 is None
    assert trace_iptables(rules.text, out("2001:db8::1", 80)) == NONE
    alone = render_iptables(spec("stock-ipv6")).ipv6  # accel render --family 6: the IPv6 block alone
    assert trace_iptables(alone, out("2001:db8::1", 80)) == OUT
    assert trace_iptables(alone, out("10.96.0.10", 80)) == NONE


# -- what it does not know ----------------------------------------------------------------------

UNKNOWN_IPTABLES = [
    ("-A ISTIO_OUTPUT -m state --state NEW -j RETURN", "-m state"),
    ("-A ISTIO_OUTPUT -m socket -j RETURN", "-m socket"),
    ("-A ISTIO_OUTPUT -p tcp -m tcp --dport 80 -j RETURN", "-m tcp"),
    ("-A ISTIO_OUTPUT -p icmp -j RETURN", "icmp"),
    ("-A ISTIO_OUTPUT -p tcp --dport 1000:2000 -j RETURN", "ranges"),
    ("-A ISTIO_OUTPUT -j LOG", "LOG"),
    ("-A ISTIO_OUTPUT -j NO_SUCH_CHAIN", "NO_SUCH_CHAIN"),
    ("-A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 1", "REDIRECT in ISTIO_OUTPUT"),
    ("-A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 1 --random", "REDIRECT"),
    ("-A ISTIO_OUTPUT -m owner --uid-owner 1 --suppl-groups -j RETURN", "--suppl-groups"),
    ("-A ISTIO_OUTPUT -m owner --gid-owner nosuchgroup -j RETURN", "nosuchgroup"),
    ("-A ISTIO_OUTPUT -m owner --uid-owner istio-proxy -j RETURN", "numeric uids"),
    ("-A ISTIO_OUTPUT -m owner -j RETURN", "without any of its options"),
    ("-A ISTIO_OUTPUT -i eth0 -j RETURN", "-i is not valid here"),
    ("-A ISTIO_INBOUND -m owner --uid-owner 1 -j RETURN", "only a local socket"),
    ("-A ISTIO_OUTPUT -d 10.0.0.0/8 -d 11.0.0.0/8 -j RETURN", "given twice"),
    ("-A ISTIO_OUTPUT -p tcp", "without a target"),
    ("-A ISTIO_OUTPUT ! -p tcp -j RETURN", "'!'"),
    ("-A ISTIO_OUTPUT -j CT --zone 1", "in raw"),
    ("-A POSTROUTING -j RETURN", "PREROUTING and OUTPUT"),
    ("-A ISTIO_REDIRECT -j ISTIO_OUTPUT", "loop"),
    ("-I ISTIO_OUTPUT 99 -j RETURN", "insert at 99"),
    ("-N ISTIO_OUTPUT", "already exists"),
    ("-X ISTIO_OUTPUT", "not a line"),
    (":ISTIO_OUTPUT - [0:0]", "not a line"),
    ("-A ISTIO_OUTPUT -d ::1/128 -j RETURN", "both IPv4 and IPv6"),
]


@pytest.mark.parametrize("line, reason", UNKNOWN_IPTABLES, ids=[row[0] for row in UNKNOWN_IPTABLES])
def test_unknown_iptables_shapes_raise_naming_the_line(line, reason):
    lines = render_iptables(spec("stock")).ipv4.splitlines()
    at = lines.index("-A ISTIO_OUTPUT -j ISTIO_REDIRECT") + 1
    lines.insert(at, line)
    with pytest.raises(TraceError) as error:
        IptablesTracer("\n".join(lines) + "\n", group_ids=CASE_GROUPS)
    if reason != "both IPv4 and IPv6":  # found when the block ends, named by its first line
        assert error.value.where == f"line {at + 1}: {line}"
    assert reason in str(error.value)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("* filter\n-A OUTPUT -j ACCEPT\nCOMMIT\n", "'filter'"),
        ("* nat\n-A OUTPUT -j RETURN\n", "no COMMIT"),
        ("-A OUTPUT -j RETURN\n", "outside a table"),
        (
            "* nat\n-A OUTPUT -j RETURN\nCOMMIT\n" * 3,
            "more than two",
        ),
        ('* nat\n-A OUTPUT -o "eth 0" -j RETURN\nCOMMIT\n', "quoted"),
    ],
)
def test_unknown_iptables_constructs_raise(text, reason):
    with pytest.raises(TraceError, match=reason):
        IptablesTracer(text)


UNKNOWN_NFTABLES = [
    ("meta nfproto ipv4 counter return", "meta nfproto"),
    ("ip protocol tcp counter return", "ip protocol"),
    ("th dport 53 counter return", "'th'"),
    ("ct state new counter log", "'log'"),
    ("socket transparent 1 counter return", "'socket'"),
    ("counter masquerade", "'masquerade'"),
    ("tcp dport 1000-2000 counter return", "ranges"),
    ("meta l4proto tcp counter redirect to :1", "redirect in istio-output"),
    ("counter jump nope", "no such regular chain"),
    ("counter accept counter", "after the verdict"),
    ("oifname counter counter return", "must be quoted"),
    ("skuid istio-proxy counter return", "numeric uids"),
    ("skgid nosuchgroup counter return", "nosuchgroup"),
    ("iifname eth0 counter return", "iifname is only understood in prerouting"),
    ("ip daddr @nope counter return", "no set nope"),
    ("ip daddr 2001:db8::/32 counter return", "not an IPv4 address"),
    ("counter packets 0 bytes 0 return", "'packets'"),
    ("meta l4proto tcp tproxy ip to :1 counter accept", "prerouting only"),
    ("ct zone 1 counter return", "expected 'set'"),
]


@pytest.mark.parametrize("body, reason", UNKNOWN_NFTABLES, ids=[row[0] for row in UNKNOWN_NFTABLES])
def test_unknown_nftables_shapes_raise_naming_the_line(body, reason):
    lines = render_nftables(spec("stock")).splitlines()
    line = f"add rule inet {c.NFT_TABLE_NAT} {c.NFT_CHAIN_OUTPUT} {body}"
    lines.append(line)
    with pytest.raises(TraceError) as error:
        NftablesTracer("\n".join(lines) + "\n", group_ids=CASE_GROUPS)
    assert error.value.where == f"line {len(lines)}: {line}"
    assert reason in str(error.value)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("add table ip t", "family inet"),
        ("delete table inet istio-proxy-nat", "not a command"),
        ("add chain inet istio-proxy-nat in { type filter hook input priority 0 ; }", "hook input"),
        ("add chain inet istio-proxy-nat o2 { type nat hook output priority -100 ; }", "priority -100"),
        ("add chain inet istio-proxy-nat o3 { type nat hook output priority -100 ; policy drop ; }", "only { type"),
        ("add set inet istio-proxy-nat s { type ether_addr ; }", "for a set"),
        (f"insert rule inet istio-proxy-nat {c.NFT_CHAIN_REDIRECT} index 5 counter return", "insert at index 5"),
        ("add rule inet nope output counter return", "no table"),
        ("add rule inet istio-proxy-nat nope counter return", "no chain nope"),
    ],
)
def test_unknown_nftables_commands_raise(line, reason):
    text = render_nftables(spec("stock")) + line + "\n"
    with pytest.raises(TraceError, match=reason):
        NftablesTracer(text)


def test_an_interface_not_named_by_the_flow_matches_no_named_interface():
    """interface=None: an interface the rules do not name (so -c/-k never apply to it)."""
    named = tracers("exclude-nic")
    for tracer in named.values():
        assert tracer.trace(out("10.96.0.10", 80)) == OUT
        assert tracer.trace(inb(8080)) == IN


def test_flows_refuse_what_the_kernel_cannot_send():
    with pytest.raises(ValueError, match="loopback"):
        Flow(direction="outbound", src="10.1.0.5", dst="127.0.0.1", dport=80, uid=1, gid=1)
    with pytest.raises(ValueError, match="uid and gid"):
        Flow(direction="outbound", src="10.1.0.5", dst="10.96.0.10", dport=80)
    with pytest.raises(ValueError, match="different IP versions"):
        Flow(direction="inbound", src="10.1.0.5", dst="fd00::5", dport=80)
    with pytest.raises(ValueError, match="protocol"):
        Flow(direction="inbound", src="10.1.0.5", dst="10.1.0.6", dport=80, protocol="sctp")
