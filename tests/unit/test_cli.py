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
    assert document["text"] == document["families"]["ipv4"] + document["families"]["ipv6"]
    assert document["datapath"] is None
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


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["render", "--", "-p", "70000"], "--envoy-port/-p: port out of range 1-65535 (got '70000')"),
        (["render", "--", "-i", "10.0.0.0/33"], "--istio-service-cidr/-i: prefix length 33"),
        (["render", "--", "-m", "SPLICE"], "--istio-inbound-interception-mode/-m: unknown interception mode"),
        (["render", "--", "-u", "root"], "--proxy-uid/-u: not a numeric uid (got 'root')"),
        (["render", "--istio-config", "/nonexistent/config.json"], "--istio-config: cannot read file"),
        (["render", "--annotations", "/nonexistent/pod.json"], "--annotations: cannot read file"),
        (["render", "--dns-servers", "not-an-ip"], "--dns-servers: not an IP address"),
        (["render", "--istio-config", "x.json", "--", "-p", "1"], "input: give only one of them"),
    ],
)
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


def one_error_line(result, code: int = 2) -> str:
    """The whole of stderr for a refused command: exactly one `accel: error:` line, nothing on stdout."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == "" and "Traceback" not in result.output
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("accel: error: "), result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["render", "--backend", "bogus"], ["--backend: 'bogus' is not one of", "accel render --help"]),
        (["render", "--backend"], ["--backend", "requires an argument"]),
        (["render", "--family", "5"], ["--family: '5' is not one of"]),
        (["bogus"], ["No such command 'bogus'", "accel --help"]),
        (["--bogus"], ["No such option", "--bogus"]),
        (["lab", "bogus"], ["No such command 'bogus'", "accel lab --help"]),
    ],
)
def test_click_usage_errors_are_one_line(argv, needles):
    line = one_error_line(invoke(*argv))
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(
    "argv, needles",
    [
        (
            ["render", "--", "-i", "*", "--json"],
            ["--json: unknown istio-iptables flag", "--json is an option of accel render", "go before --"],
        ),
        (["render", "--", "--backend=nftables"], ["--backend is an option of accel render", "go before --"]),
        (["render", "--jsn"], ["did you mean accel render's --json?", "go before --"]),
        (["render", "--", "--redirect-dn"], ["did you mean --redirect-dns?"]),
        (["render", "--", "--frobnicate"], ["--frobnicate: unknown istio-iptables flag", "go before --"]),
    ],
)
def test_accel_options_after_the_double_dash_are_explained(argv, needles):
    line = one_error_line(invoke(*argv))
    for needle in needles:
        assert needle in line, line


def test_render_takes_every_backend_name_compare_takes():
    from accel.backends import BACKEND_NAMES

    assert invoke("render", "--backend", "iptables-nft").stdout == invoke("render").stdout
    assert invoke("render", "--backend", "iptables-legacy").stdout == invoke("render").stdout
    sets = invoke("render", "--backend", "nftables-sets", "--", *STOCK_ARGS)
    assert (
        sets.exit_code == 0
        and sets.stdout == invoke("render", "--backend", "nftables", "--nft-sets", "--", *STOCK_ARGS).stdout
    )
    assert sets.stdout != invoke("render", "--backend", "nftables", "--", *STOCK_ARGS).stdout
    for name in BACKEND_NAMES:
        if name != "none":
            assert invoke("render", "--backend", name).exit_code == 0, name
    assert "captures nothing, so there are no rules to render" in one_error_line(invoke("render", "--backend", "none"))
    assert "--nft-sets: only applies to --backend nftables" in one_error_line(
        invoke("render", "--backend", "ebpf", "--nft-sets")
    )


def test_family_splits_the_iptables_blocks_for_their_tools():
    both = invoke("render", "--ipv6", "--", *STOCK_ARGS).stdout
    v4 = invoke("render", "--ipv6", "--family", "4", "--", *STOCK_ARGS)
    v6 = invoke("render", "--ipv6", "--family", "6", "--", *STOCK_ARGS)
    assert v4.exit_code == v6.exit_code == 0
    assert v4.stdout + v6.stdout == both and v4.stdout.count("COMMIT") == v6.stdout.count("COMMIT") >= 1
    assert v4.stdout == (REFERENCE / "derived/default-sidecar.v4.restore").read_text()
    assert "::1/128" in v6.stdout and "127.0.0.6" not in v6.stdout
    assert (
        json.loads(invoke("render", "--ipv6", "--family", "6", "--json", "--", *STOCK_ARGS).stdout)["text"] == v6.stdout
    )
    assert "add --ipv6" in one_error_line(invoke("render", "--family", "6"))
    for backend in ("nftables", "nftables-sets", "ebpf"):
        line = one_error_line(invoke("render", "--backend", backend, "--family", "4"))
        assert "--family: only the iptables backends" in line
    assert "ip6tables-restore" in invoke("render", "--help").stdout


def test_json_has_one_schema_for_every_backend():
    from accel.backends import BACKEND_NAMES

    keys = {"backend", "spec", "warnings", "text", "families", "datapath"}
    for name in BACKEND_NAMES:
        if name == "none":
            continue
        document = json.loads(invoke("render", "--backend", name, "--json", "--", *STOCK_ARGS).stdout)
        assert set(document) == keys, name
        assert document["backend"] == name
        iptables = name.startswith("iptables")
        assert (document["families"] is not None) == iptables and (document["datapath"] is not None) == (name == "ebpf")
    document = json.loads(invoke("render", "--json", "--", *STOCK_ARGS).stdout)
    assert document["families"] == {"ipv4": document["text"], "ipv6": None}


def test_ebpf_refusals_are_named_at_once():
    line = one_error_line(invoke("render", "--backend", "ebpf", "--", "-c", "eth1", "-k", "eth2", "--drop-invalid"))
    for flag in ("--istio-exclude-interfaces", "--kube-virt-interfaces", "--drop-invalid", "nftables backend can"):
        assert flag in line


def test_bare_accel_shows_the_help():
    result = invoke()
    assert result.exit_code == 0 and result.stdout == invoke("--help").stdout and result.stderr == ""
    assert invoke("lab").exit_code == 0 and "cleanup" in invoke("lab").stdout


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"accel {version('accel')}\n"


def test_help_groups_commands_by_what_a_user_does_and_cuts_no_summary():
    import re

    text = invoke("--help").stdout
    headings = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Z][a-z ]+:", line)]
    assert headings == ["Options", "See", "Prove", "Measure", "Try", "Run on a node"]
    listed = {}
    for line in text.splitlines():
        if re.fullmatch(r"[A-Z][a-z ]+:", line):
            heading = line[:-1]
        elif re.match(r"  [a-z]+ ", line):
            listed.setdefault(heading, []).append(line.split()[0])
    assert listed["See"] == ["render", "probe"] and listed["Prove"] == ["compare", "soak", "lab"]
    assert listed["Measure"] == ["bench"] and listed["Try"] == ["demo"]
    assert listed["Run on a node"] == ["up", "pod", "status", "metrics", "follow", "down", "cni"]
    flat = " ".join(text.split())
    for name, command in main.commands.items():
        first = " ".join(command.help.split("\n\n")[0].split())
        assert first in flat, name
    assert "..." not in text.split("Options:")[1]


def test_a_heading_appears_once_a_command_registers_into_it():
    import click

    from accel.cli.common import Main

    group = Main("accel")
    group.add_command(click.Command("render", help="See."), section="See")
    assert "Run on a node" not in CliRunner().invoke(group, ["--help"]).stdout
    group.add_command(click.Command("up", help="Load the datapath once for the node."), section="Run on a node")
    text = CliRunner().invoke(group, ["--help"]).stdout
    assert "Run on a node:\n  up " in text and text.index("See:") < text.index("Run on a node:")


def test_python_dash_m_accel():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "accel", "render", "--backend", "nftables", "--", *STOCK_ARGS],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == invoke("render", "--backend", "nftables", "--", *STOCK_ARGS).stdout
    usage = subprocess.run([sys.executable, "-m", "accel", "--bogus"], capture_output=True, text=True)
    assert (
        usage.returncode == 2
        and usage.stderr.startswith("accel: error: No such option")
        and usage.stderr.count("\n") == 1
    )


def test_shell_completion():
    source = CliRunner().invoke(main, [], prog_name="accel", env={"_ACCEL_COMPLETE": "bash_source"})
    assert source.exit_code == 0 and "_accel_completion" in source.stdout and "complete " in source.stdout

    def complete(words: str) -> list[str]:
        env = {"_ACCEL_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        result = CliRunner().invoke(main, [], prog_name="accel", env=env)
        return [line.split(",", 1)[1] for line in result.stdout.splitlines()]

    assert complete("accel re") == ["render"]
    assert complete("accel render --backend nftables") == ["nftables", "nftables-sets"]
    assert complete("accel compare --backends iptables,nf") == ["iptables,nftables", "iptables,nftables-sets"]
