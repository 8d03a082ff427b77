"""accel render: prints rules or JSON; bad input is one line on stderr and exit 2."""

import json

import pytest
from click.testing import CliRunner

from accel import inputs
from accel.cli import main
from tests.reference import REFERENCE, default_sidecar, golden_cases

STOCK_ARGS = default_sidecar()["argv"][1:]


def invoke(*argv, env=None):
    return CliRunner().invoke(main, list(argv), env=env or {})


def test_render_iptables_from_istio_args():
    result = invoke("render", "--backend", "iptables", "--", *STOCK_ARGS)
    assert result.exit_code == 0, result.output
    assert result.stdout == (REFERENCE / "derived/default-sidecar.v4.restore").read_text()


def test_render_nftables_with_ipv6():
    result = invoke("render", "--backend", "nftables", "--ipv6", "--", *STOCK_ARGS)
    assert result.exit_code == 0
    assert result.stdout.strip() == (REFERENCE / "derived/default-sidecar-ipv6.nft").read_text().strip()


def test_json_wraps_rules_with_the_spec():
    result = invoke("render", "--json", "--ipv6", "--", *STOCK_ARGS)
    document = json.loads(result.stdout)
    assert document["backend"] == "iptables"
    expected = default_sidecar()["effective_config"] | {"EnableIPv6": True}
    assert document["spec"] == {key: expected[key] for key in document["spec"]}
    assert document["text"] == document["ipv4"] + document["ipv6"]
    assert inputs.from_istio_config(document["spec"]).enable_ipv6


def test_istio_config_and_annotations_files(tmp_path):
    for case in golden_cases():
        if case.suite == "cni-sidecar":
            path = tmp_path / "pod.json"
            keys = ("annotations", "proxy_env", "proxy_runAsUser", "proxy_runAsGroup")
            path.write_text(json.dumps({k: case.raw[k] for k in keys}))
            result = invoke("render", "--annotations", str(path))
        else:
            path = tmp_path / "config.json"
            path.write_text(json.dumps(case.raw["effective_config"]))
            result = invoke("render", "--backend", case.backend, "--istio-config", str(path))
        assert result.exit_code == 0, (case.id, result.output)
        assert result.stdout.strip() == case.expected, case.id


def test_environment_is_read_for_istio_args():
    result = invoke("render", "--json", env={"ISTIO_SERVICE_CIDR": "10.0.0.0/8"})
    assert json.loads(result.stdout)["spec"]["OutboundIPRangesInclude"] == "10.0.0.0/8"


@pytest.mark.parametrize("argv, needle", [
    (["render", "--", "-p", "70000"], "--envoy-port/-p: port out of range 1-65535 (got '70000')"),
    (["render", "--", "-i", "10.0.0.0/33"], "--istio-service-cidr/-i: prefix length 33"),
    (["render", "--", "-m", "SPLICE"], "--istio-inbound-interception-mode/-m: unknown interception mode"),
    (["render", "--", "-u", "root"], "--proxy-uid/-u: not a numeric uid (got 'root')"),
    (["render", "--istio-config", "/nonexistent/config.json"], "--istio-config: cannot read file"),
    (["render", "--annotations", "/nonexistent/pod.json"], "--annotations: cannot read file"),
    (["render", "--dns-servers", "not-an-ip"], "--dns-servers: not an IP address"),
    (["render", "--istio-config", "x.json", "--", "-p", "1"], "input: give only one of them"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle):
    result = invoke(*argv)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("accel: error: ") and needle in lines[0], lines
    assert "Traceback" not in result.output


def test_bad_annotation_value(tmp_path):
    path = tmp_path / "pod.json"
    path.write_text(json.dumps({"annotations": {"sidecar.istio.io/interceptionMode": "NONE"}}))
    result = invoke("render", "--annotations", str(path))
    assert result.exit_code == 2
    assert "sidecar.istio.io/interceptionMode: unknown annotation value" in result.stderr
    path.write_text("{not json")
    assert "not valid JSON" in invoke("render", "--annotations", str(path)).stderr


def test_warnings_go_to_stderr():
    result = invoke("render", "--dns-servers", "", "--", "--redirect-dns")
    assert result.exit_code == 0
    assert "DNS capture is off" in result.stderr and "15053" not in result.stdout


def test_help_explains_every_istio_flag():
    text = invoke("render", "--help").stdout
    for field in inputs.FIELDS:
        for name in field.flags:
            assert name in text, name
        if not field.flags:
            assert field.env[0] in text
    for option in ("--backend", "--istio-config", "--annotations", "--json", "--ipv6"):
        assert option in text
