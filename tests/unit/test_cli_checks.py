"""compare, bench, probe, lab and demo check their input before any work: bad input is one line and
exit 2 at once; good input without root is one line and exit 1. Nothing here builds a lab or loads
BPF: the functions that would are replaced by ones that fail the test, and the user is not root."""

import json
import re

import pytest
from click.testing import CliRunner

import accel.bench.run
import accel.compare
import accel.demo
import accel.ebpf.probe
import accel.lab
from accel.backends import BACKEND_NAMES
from accel.bench.run import MODE_CHOICES
from accel.cli import main
from accel.ebpf.probe import Feature
from tests.unit.test_cli import one_error_line


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch):
    def ran(*args, **kwargs):
        raise AssertionError("the command did its work instead of refusing")

    for module, name in (
        (accel.compare, "compare"),
        (accel.bench.run, "run_bench"),
        (accel.demo, "run_demo"),
        (accel.ebpf.probe, "probe"),
        (accel.lab, "cleanup_leftovers"),
    ):
        monkeypatch.setattr(module, name, ran)
    monkeypatch.setattr("os.geteuid", lambda: 1000)


def invoke(*argv):
    return CliRunner().invoke(main, list(argv))


@pytest.mark.parametrize("option, name", [("--json", "run.json"), ("--plot", "run.png"), ("--markdown", "run.md")])
def test_bench_output_paths_are_checked_before_any_work(tmp_path, monkeypatch, option, name):
    (tmp_path / "file").write_text("")
    (tmp_path / "dir.png").mkdir()
    cases = [(tmp_path / "missing" / name, "does not exist"), (tmp_path / "file" / name, "is not a directory")]
    if option == "--plot":
        cases.append((tmp_path / "dir.png", "is a directory"))
    for path, reason in cases:
        line = one_error_line(invoke("bench", "--quick", option, str(path)))
        assert line.startswith(f"accel: error: {option}: ") and reason in line and repr(str(path)) in line, line
    assert "needs root" in one_error_line(invoke("bench", "--quick", option, str(tmp_path / name)), code=1)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    line = one_error_line(invoke("bench", "--quick", option, str(tmp_path / name)))
    assert f"{option}: cannot write" in line and str(tmp_path / name) in line


def test_bench_json_to_stdout_needs_no_directory():
    assert "needs root" in one_error_line(invoke("bench", "--json", "-"), code=1)


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["compare", "--backends", ""], ["--backends: empty list"]),
        (["compare", "--backends", " , "], ["--backends: empty backend name"]),
        (["compare", "--backends", "iptables,,ebpf"], ["--backends: empty backend name in 'iptables,,ebpf'"]),
        (["compare", "--backends", "iptables,"], ["--backends: empty backend name"]),
        (["bench", "--modes", ""], ["--modes: empty list"]),
        (["bench", "--modes", "explicit,,ebpf"], ["--modes: empty mode name in 'explicit,,ebpf'"]),
        (["compare", "--backends", "iptables,ebpf2"], ["--backends: unknown backend 'ebpf2'", *BACKEND_NAMES]),
        (["bench", "--modes", "iptables,bogus"], ["--modes: unknown mode 'bogus'", *MODE_CHOICES]),
        (["bench", "--modes", "none,ebpf"], ["--modes: modes must include explicit"]),
        (["bench", "--plot", "out.svg"], ["--plot: must name a .png file"]),
        (["bench", "--rounds", "0"], ["--rounds: 0 is not in the range"]),
    ],
)
def test_lists_and_values_are_checked_at_once(argv, needles):
    line = one_error_line(invoke(*argv))
    for needle in needles:
        assert needle in line, line


def test_help_says_which_names_each_list_takes():
    def words(text):
        return set(re.split(r"[\s,:()]+", text))

    assert set(BACKEND_NAMES) <= words(invoke("compare", "--help").stdout.split("Backends:")[1])
    assert set(MODE_CHOICES) <= words(invoke("bench", "--help").stdout.split("One pair per mode:")[1])


def test_compare_refuses_what_ebpf_cannot_capture_before_any_lab():
    line = one_error_line(
        invoke("compare", "--backends", "iptables,ebpf", "--", "-c", "eth1", "-k", "eth2", "--drop-invalid")
    )
    for needle in (
        "ebpf backend cannot capture",
        "--istio-exclude-interfaces",
        "--kube-virt-interfaces",
        "--drop-invalid",
    ):
        assert needle in line, line
    assert "needs root" in one_error_line(invoke("compare", "--backends", "nftables", "--", "-c", "eth1"), code=1)


def test_compare_has_no_nameserver_options():
    """The lab's resolver is the pod's nameserver: --dns-servers and --resolv-conf would change nothing."""
    text = invoke("compare", "--help").stdout
    assert "--dns-servers" not in text and "--resolv-conf" not in text
    assert "unknown istio-iptables flag" in one_error_line(invoke("compare", "--dns-servers", "10.0.0.1"))


def test_compare_names_the_option_it_was_given_misspelled():
    line = one_error_line(invoke("compare", "--backend", "iptables,ebpf", "--", "-i", "*"))
    assert "did you mean accel compare's --backends?" in line and "go before --" in line
    line = one_error_line(invoke("compare", "--", "-i", "*", "--backends", "ebpf"))
    assert "--backends is an option of accel compare" in line


@pytest.mark.parametrize("argv", [["compare"], ["bench", "--quick"], ["probe"], ["demo"], ["lab", "cleanup"]])
def test_root_is_needed_and_said_in_one_line(argv):
    line = one_error_line(invoke(*argv), code=1)
    assert line.startswith(f"accel: error: accel {' '.join(argv[:2] if argv[0] == 'lab' else argv[:1])} needs root (")


@pytest.mark.parametrize("present", [True, False])
def test_probe_json_has_stable_keys(monkeypatch, present):
    features = [
        Feature("bpf syscall", True, "works"),
        Feature("sk_lookup", present, "loads" if present else "EINVAL"),
        Feature("sk_msg links to a sockhash", False, "EINVAL", "short-circuit"),
    ]
    monkeypatch.setattr(accel.ebpf.probe, "probe", lambda: features)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    result = invoke("probe", "--json")
    assert result.exit_code == (0 if present else 1)
    assert json.loads(result.stdout) == {
        "ok": present,
        "short_circuit": False,
        "features": [
            {"name": "bpf syscall", "ok": True, "detail": "works", "needed_for": "capture"},
            {"name": "sk_lookup", "ok": present, "detail": "loads" if present else "EINVAL", "needed_for": "capture"},
            {"name": "sk_msg links to a sockhash", "ok": False, "detail": "EINVAL", "needed_for": "short-circuit"},
        ],
    }
