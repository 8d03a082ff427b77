"""accel compare on real traffic: nftables captures exactly what iptables captures.

The reference's own outcomes are checked for the capture they must show, so an agreement can
never come from a lab in which nothing is captured.
"""

import json
import os

import pytest
from click.testing import CliRunner

from accel import inputs
from accel.backends import NoneBackend
from accel.cli import main
from accel.compare import compare
from accel.ebpf.inspect import bpf_objects
from accel.lab import leftovers
from accel.lab.wait import wait_for
from tests.kernel_state import host_links, rule_state

pytestmark = pytest.mark.privileged

DEFAULT = list(inputs.ISTIO_INIT_DEFAULT_ARGS)
# name: (istio-iptables args, environment, IPv6, cases that must exist, {case: first hop in iptables})
SPECS = {
    "cidr-and-port-lists": (
        [
            "-i",
            "10.0.0.0/8,203.0.113.0/24",
            "-x",
            "10.96.0.0/16,203.0.113.128/25",
            "-o",
            "9000",
            "-q",
            "7777",
            "-b",
            "8080,9091,15008",
            "-d",
            "15020",
        ],
        {},
        False,
        {
            "outbound-service": "sidecar outbound",
            "outbound-excluded-cidr": "remote tcp:8080",
            "outbound-outside-include": "remote tcp:8080",
            "outbound-excluded-port": "remote tcp:9000",
            "outbound-included-port": "sidecar outbound",
            "inbound-included-port-9091": "sidecar inbound",
            "inbound-outside-include": "pod tcp:9090",
            # the tunnel port returns before the include list (found by test_decision.py)
            "inbound-tunnel-port": "pod tcp:15008",
        },
    ),
    "uid-gid-lists": (
        ["-u", "3,1337", "-g", "1337,4", "-i", "*", "-b", "*"],
        {},
        False,
        {
            "outbound-as-proxy-uid-3": "remote tcp:8080",
            "outbound-as-proxy-gid-4": "remote tcp:8080",
            "outbound-service": "sidecar outbound",
        },
    ),
    "owner-groups-exclude": (
        ["-i", "*", "-b", "*"],
        {"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "2345"},
        False,
        {"outbound-excluded-owner-group": "remote tcp:8080", "outbound-service": "sidecar outbound"},
    ),
    "owner-groups-include": (
        ["-i", "*", "-b", "*"],
        {"ISTIO_OUTBOUND_OWNER_GROUPS": "2345,2346"},
        False,
        {"outbound-included-owner-group": "sidecar outbound", "outbound-other-owner-group": "remote tcp:8080"},
    ),
    "dns-capture": (
        DEFAULT + ["--redirect-dns"],
        {},
        False,
        {
            "dns-udp": "sidecar dns",
            "dns-tcp": "sidecar dns",
            "dns-udp-sendto": "sidecar dns",
            "dns-udp-other-server": "dns dns:53",
            "dns-tcp-other-server": "sidecar outbound",
        },
    ),
    "dns-capture-all": (
        DEFAULT + ["--redirect-dns", "--capture-all-dns"],
        {},
        False,
        {"dns-udp-other-server": "sidecar dns", "dns-tcp-other-server": "sidecar dns"},
    ),
    # TPROXY's hairpin marks local connections by uid or gid and ignores the tunnel port (found by
    # test_decision.py: the eBPF datapath once passed both)
    "tproxy": (
        ["-m", "TPROXY", "-i", "*", "-b", "*", "-d", "15090,15021,15020"],
        {},
        False,
        {
            "inbound-app-port": "sidecar inbound",
            "inbound-excluded-port-15020": "pod tcp:15020",
            "inbound-tunnel-port": "sidecar inbound",
            "outbound-service": "sidecar outbound",
            "proxy-gid-to-app-over-lo": "sidecar inbound",
            "proxy-to-tunnel-port-over-lo": "sidecar inbound",
        },
    ),
    "ipv6": (
        DEFAULT + ["--redirect-dns"],
        {},
        True,
        {
            "outbound-service-v6": "sidecar outbound",
            "inbound-app-port-v6": "sidecar inbound",
            "proxy-to-app-over-lo-v6": "sidecar inbound",
            "inbound-passthrough-source-v6": "pod tcp:8080",
            "dns-udp-v6": "sidecar dns",
            "outbound-own-pod-ip-v6": "pod tcp:8080",
            "outbound-unspecified-v6": "pod tcp:8080",
            "udp-after-dns": "sidecar dns",
            "udplite-to-53": "dns udplite:53",
        },
    ),
    # the passthrough source exempts DNS to the pod's own address (sendmsg4/6)
    "ipv6-dns-all": (
        DEFAULT + ["--redirect-dns", "--capture-all-dns"],
        {},
        True,
        {
            "dns-udp-sendto-from-passthrough": "pod dns:53",
            "dns-udp-sendto-from-passthrough-v6": "pod dns:53",
            "dns-udp-v6": "sidecar dns",
        },
    ),
    "tproxy-ipv6-excluded": (
        ["-m", "TPROXY", "-i", "*", "-b", "8080", "-x", "2001:db8:5e::/48,198.51.100.0/24"],
        {},
        True,
        {
            "outbound-excluded-cidr-v6": "remote tcp:8080",
            "inbound-app-port-v6": "sidecar inbound",
            "inbound-outside-include-v6": "pod tcp:9090",
        },
    ),
    # an IPv6 range never covers IPv4 destinations, not even ::/0 or IPv4-mapped ones
    "ipv6-all-excluded": (
        ["-i", "*", "-b", "*", "-x", "::/0"],
        {},
        True,
        {
            "outbound-service": "sidecar outbound",
            "outbound-service-mapped": "sidecar outbound",
            "outbound-excluded-cidr-v6": "remote tcp:8080",
        },
    ),
    "loopback-include": (
        ["-i", "127.1.2.3/32"],
        {},
        False,
        {"outbound-service": "sidecar outbound", "outbound-outside-include": "remote tcp:8080"},
    ),
}


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """After every run: no lab namespace, cgroup, file, process, host rule or host link, and no
    BPF program, map or link that was not there before."""
    host_rules, links, bpf = rule_state(None), host_links(), bpf_objects()
    yield
    assert leftovers(os.getpid()) == {"namespaces": [], "cgroups": [], "directories": []}
    assert rule_state(None) == host_rules
    assert host_links() == links

    def new_bpf_objects():
        return {kind: objects - bpf[kind] for kind, objects in bpf_objects().items()}

    wait_for(lambda: not any(new_bpf_objects().values()))  # maps are freed after an RCU grace period
    assert new_bpf_objects() == {"prog": set(), "map": set(), "link": set()}


def first_hop(comparison, backend, case):
    path = comparison.runs[backend].outcomes[case]["path"]
    return path[0] if path else None


def test_istio_init_default():
    spec = inputs.from_istio_args(DEFAULT, {})
    result = compare(spec, ["iptables", "nftables", "nftables-sets", "ebpf", "ebpf+sockmap", "none"])
    for backend in ("nftables", "nftables-sets", "ebpf", "ebpf+sockmap"):
        assert result.mismatches(backend) == 0, backend
    captured = {c.name for c in result.cases if (first_hop(result, "iptables", c.name) or "").startswith("sidecar")}
    assert {"outbound-service", "inbound-app-port", "proxy-to-app-over-lo", "dns-tcp"} <= captured
    # the control: everything captured under iptables reaches its server directly instead, and the
    # inbound connection iptables refuses (its proxy listens on IPv6 only) reaches the app
    differs = {c.name for c in result.cases if not result.agrees("none", c)}
    assert differs == captured | {"inbound-ipv6-only-listener"}
    assert result.ok  # none is allowed to differ
    ref = result.runs["iptables"].outcomes
    assert ref["outbound-service"]["so_original_dst"] == "203.0.113.10:8080"
    # the cases that only a proxy's view shows, as the reference sees them
    assert ref["outbound-send-close-late"]["so_original_dst"] == "203.0.113.10:8080"
    assert ref["outbound-send-close-late"]["path"] == ["sidecar outbound", "remote tcp:8080"]
    assert ref["app-dials-proxy-port"]["so_original_dst"] == "127.0.0.1:15001"  # its own, not an error
    for name in (
        "outbound-unspecified",
        "outbound-unspecified-mapped",
        "proxy-to-unspecified",
        "outbound-address-added-after-apply",
    ):
        assert ref[name]["path"] == ["pod tcp:8080"], name
    assert first_hop(result, "iptables", "proxy-to-address-added-after-apply") == "sidecar inbound"
    assert first_hop(result, "iptables", "outbound-address-removed-after-apply") == "sidecar outbound"
    assert ref["inbound-ipv6-only-listener"]["result"] == "refused"
    assert first_hop(result, "iptables", "userns-outbound-service") == "sidecar outbound"
    assert first_hop(result, "iptables", "userns-outbound-as-proxy-uid-1337") == "remote tcp:8080"
    assert ref["userns-outbound-service"]["proxy_peer"] == "198.18.0.11"
    assert ref["outbound-service"]["app_peer"] == "203.0.113.10:8080"  # getpeername: the original destination
    assert ref["inbound-app-port"]["proxy_peer"] == "198.18.0.20"  # the client's source, seen by the proxy
    assert ref["inbound-app-port"]["server_peer"] == "127.0.0.6"  # delivered by the proxy's passthrough
    assert first_hop(result, "iptables", "outbound-service-mapped") == "sidecar outbound"
    # the ways around the capture that are not (issue: no bypass)
    for name in (
        "outbound-after-dropping-from-proxy-uid",
        "outbound-second-connect-after-a-failure",
        "outbound-tcp-fast-open",
    ):
        assert ref[name]["path"] == ["sidecar outbound", "remote tcp:8080"], name
    assert ref["outbound-bound-to-passthrough-source"]["result"] == "error:EINVAL"  # no route off lo from 127/8
    assert ref["outbound-own-pod-ip-inbound-port"]["path"] == ["sidecar inbound"]  # dialled, not captured
    assert first_hop(result, "iptables", "dns-udp-sendto-on-a-connected-socket") == "dns dns:53"
    assert first_hop(result, "iptables", "proxy-to-tunnel-port-over-lo") == "pod tcp:15008"
    assert ref["outbound-service-mapped"]["app_peer"] == "[::ffff:203.0.113.10]:8080"
    for name in (
        "outbound-as-proxy-uid-1337",
        "outbound-as-proxy-gid-1337",
        "outbound-localhost",
        "outbound-own-pod-ip",
        "inbound-passthrough-source",
        "inbound-tunnel-port",
        "udp-not-dns",
        "inbound-excluded-port-15020",
        "inbound-excluded-port-15021",
        "inbound-excluded-port-15090",
    ):
        assert not first_hop(result, "iptables", name).startswith("sidecar"), name
    conntrack = result.to_json()["conntrack_entries"]
    assert conntrack["iptables"] >= len(captured) and conntrack["nftables"] >= len(captured)
    assert conntrack["ebpf"] == conntrack["ebpf+sockmap"] == conntrack["none"] == 0


# The short-circuit changes how bytes travel, never where: a few specs with it too (every case of
# the stock spec above), the others without, for time.
WITH_SHORTCUT = {"tproxy", "ipv6", "dns-capture"}
# nftables-sets differs from nftables only where a spec has CIDR or port lists: the specs with
# lists run it (the tracer's hypothesis test compares the two renderings for any spec).
WITH_SETS = {"cidr-and-port-lists", "tproxy", "tproxy-ipv6-excluded", "ipv6-all-excluded", "loopback-include"}


@pytest.mark.parametrize("name", SPECS)
def test_nftables_and_ebpf_agree_for_each_option(name):
    args, env, ipv6, expected = SPECS[name]
    spec = inputs.from_istio_args(args, env, enable_ipv6=ipv6)
    captures = [
        "nftables",
        *(["nftables-sets"] if name in WITH_SETS else []),
        "ebpf",
        *(["ebpf+sockmap"] if name in WITH_SHORTCUT else []),
    ]
    result = compare(spec, ["iptables", *captures])
    observed = {case: first_hop(result, "iptables", case) for case in expected}
    assert observed == expected
    for backend in captures:
        disagreements = {
            c.name: (result.runs[backend].outcomes[c.name], result.runs["iptables"].outcomes[c.name])
            for c in result.cases
            if not result.agrees(backend, c)
        }
        assert not disagreements, backend
    conntrack = result.to_json()["conntrack_entries"]
    assert conntrack["ebpf"] == 0 and conntrack["iptables"] > 0


def test_an_interface_prefix_means_the_same_to_iptables_and_nftables():
    """-c eth+ (every name starting eth): iptables' trailing + is nftables' trailing * (the packet
    tracer found the nftables rendering once read it as the literal name "eth+"). ebpf refuses -c."""
    spec = inputs.from_istio_args(["-i", "*", "-b", "*", "-c", "eth+"], {})
    result = compare(spec, ["iptables", "nftables", "nftables-sets"])
    assert first_hop(result, "iptables", "outbound-service") == "remote tcp:8080"  # out by eth0: exempt
    assert first_hop(result, "iptables", "inbound-app-port") == "pod tcp:8080"  # in by eth0: exempt
    for backend in ("nftables", "nftables-sets"):
        assert result.mismatches(backend) == 0, backend


def test_iptables_variants_agree():
    spec = inputs.from_istio_args(["-m", "TPROXY", "-i", "*", "-b", "*", "--redirect-dns"], {})
    result = compare(spec, ["iptables-nft", "iptables-legacy"])
    assert result.mismatches("iptables-legacy") == 0


def test_annotations_input(tmp_path):
    pod = tmp_path / "pod.json"
    pod.write_text(
        json.dumps(
            {
                "annotations": {
                    "sidecar.istio.io/status": "{}",
                    "traffic.sidecar.istio.io/excludeOutboundIPRanges": "203.0.113.0/24",
                },
                "proxy_env": {"ISTIO_META_DNS_CAPTURE": "true"},
            }
        )
    )
    run = CliRunner().invoke(
        main,
        [
            "compare",
            "--backends",
            "iptables,nftables",
            "--json",
            "--annotations",
            str(pod),
            "--cases",
            "outbound-excluded-cidr,dns-udp-other-server",
        ],
    )
    assert run.exit_code == 0, run.output
    document = json.loads(run.stdout)
    outcomes = {c["name"]: c["outcomes"]["iptables"] for c in document["cases"]}
    assert outcomes["outbound-excluded-cidr"]["path"] == ["remote tcp:8080"]
    assert outcomes["dns-udp-other-server"]["path"][0] == "sidecar dns"  # istio-cni captures all DNS


def test_cli_json_and_table():
    """The CLI's outputs, on a few cases (test_istio_init_default runs them all)."""
    run = CliRunner().invoke(main, ["compare", "--json", "--cases", "outbound-service,dns-*", "--", *DEFAULT])
    assert run.exit_code == 0, run.output
    document = json.loads(run.stdout)
    assert set(document) >= {"spec", "cases", "mismatches", "conntrack_entries"}
    assert document["mismatches"]["nftables"] == 0 and document["mismatches"]["none"] > 0
    case = document["cases"][0]
    assert set(case) >= {"name", "outcomes", "agrees"} and set(case["outcomes"]) == {"iptables", "nftables", "none"}
    assert case["name"] == "outbound-service" and all(c["name"].startswith("dns-") for c in document["cases"][1:])
    table = CliRunner().invoke(
        main, ["compare", "--backends", "nftables", "--cases", "outbound-service", "--", *DEFAULT]
    )
    assert table.exit_code == 0
    assert "outbound-service" in table.stdout and "nftables captured exactly what iptables captured" in table.stdout


def test_cli_exits_1_when_a_backend_differs(monkeypatch):
    """A backend that captures nothing under another name must fail the comparison."""
    import accel.compare.run as run_module

    real = run_module.get_backend
    monkeypatch.setattr(run_module, "get_backend", lambda name: NoneBackend() if name == "nftables" else real(name))
    run = CliRunner().invoke(
        main, ["compare", "--backends", "iptables,nftables", "--cases", "outbound-service", "--", *DEFAULT]
    )
    assert run.exit_code == 1
    assert "nftables captured differently from iptables" in run.stdout


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["compare", "--backends", "iptables,ebpf2"], "--backends: unknown backend"),
        (["compare", "--", "-i", "10.0.0.0/33"], "--istio-service-cidr/-i: prefix length 33"),
    ],
)
def test_cli_bad_input_exits_2(argv, needle):
    run = CliRunner().invoke(main, argv)
    assert run.exit_code == 2 and needle in run.stderr
