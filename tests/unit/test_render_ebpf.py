"""The eBPF backend's dry run: what `accel render --backend ebpf` says would be loaded."""

import ipaddress
import json

from click.testing import CliRunner
from hypothesis import given

from accel import inputs
from accel.cli import main
from accel.ebpf.compiled import BPF_DIR, SOURCES
from accel.render import render_ebpf, render_text
from accel.spec import WILDCARD
from tests.strategies import capture_specs

STOCK = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {})


def test_lists_every_program_in_bpf():
    """The program table (which the loader attaches from) names exactly the entry points in bpf/."""
    import re

    entry_points = {
        name
        for source in SOURCES
        for name in re.findall(r"^int (\w+)\(struct \w+ \*\w+\)$", (BPF_DIR / source).read_text(), re.M)
    }
    names = [p["name"] for p in render_ebpf(STOCK)["programs"]]
    assert len(entry_points) == 12 and sorted(names) == sorted(entry_points)


def test_stock_sidecar():
    document = render_ebpf(STOCK)["maps"]
    assert document["pods"] == {
        "proxy_port": 15001,
        "inbound_port": 15006,
        "tunnel_port": 15008,
        "dns_port": 15053,
        "proxy_uids": [1337],
        "proxy_gids": [1337],
        "flags": [
            "outbound-all-v4",
            "outbound-all-v6",
            "groups-all",
            "inbound-capture",
            "inbound-all",
            "has-inbound-ports-exclude",
        ],
        "host_loopback": "127.0.0.1/32",
    }
    assert document["ports"] == [{"kind": "inbound-exclude", "port": p} for p in (15090, 15021, 15020)]
    assert document["prefixes"] == [] and document["groups"] == []


def supported(spec):
    """The spec without what the eBPF backend refuses (interfaces, --drop-invalid, group names
    this machine may not resolve)."""

    def numeric(groups):
        return groups if groups == WILDCARD else tuple(g for g in groups if g.isdigit())

    return spec.replace(
        exclude_interfaces=(),
        kube_virt_interfaces=(),
        drop_invalid=False,
        owner_groups_include=numeric(spec.owner_groups_include) or WILDCARD,
        owner_groups_exclude=numeric(spec.owner_groups_exclude),
    )


@given(capture_specs.map(supported))
def test_entries_decode_back_to_the_spec(spec):
    document = render_ebpf(spec)["maps"]
    prefixes = {(p["kind"], p["cidr"]) for p in document["prefixes"]}
    for version in (4, 6):
        include = spec.outbound_include(version)
        if include != WILDCARD:
            assert {("outbound-include", str(c.network)) for c in include} <= prefixes
        assert {("outbound-exclude", str(c.network)) for c in spec.outbound_exclude(version)} <= prefixes
    assert {("dns-server", str(ipaddress.ip_network(s))) for s in spec.dns_servers_v4 + spec.dns_servers_v6} <= prefixes
    ports = {(p["kind"], p["port"]) for p in document["ports"]}
    assert ports == (
        {("outbound-exclude", p) for p in spec.outbound_ports_exclude}
        | {("outbound-include", p) for p in spec.outbound_ports_include}
        | (
            {("inbound-exclude", p) for p in spec.inbound_ports_exclude}
            if spec.inbound_ports_include == WILDCARD
            else {("inbound-include", p) for p in spec.inbound_ports_include}
        )
    )
    assert document["pods"]["proxy_uids"] == list(spec.proxy_uids)


def test_cli_text_and_json():
    runner = CliRunner()
    text = runner.invoke(main, ["render", "--backend", "ebpf", "--", "-b", "8080,9090", "-o", "9000"])
    assert text.exit_code == 0, text.output
    assert text.output == render_text(inputs.from_istio_args(["-b", "8080,9090", "-o", "9000"], {}), "ebpf")
    lines = text.output.splitlines()
    assert "ports outbound-exclude 9000" in lines and "ports inbound-include 8080,9090" in lines
    document = json.loads(runner.invoke(main, ["render", "--backend", "ebpf", "--json"]).output)
    assert document["backend"] == "ebpf" and document["datapath"]["maps"]["pods"]["proxy_port"] == 15001


def test_cli_refuses_what_the_backend_refuses():
    result = CliRunner().invoke(main, ["render", "--backend", "ebpf", "--", "-c", "eth1"])
    assert result.exit_code == 2
    assert "--istio-exclude-interfaces" in result.output and "nftables backend can" in result.output
