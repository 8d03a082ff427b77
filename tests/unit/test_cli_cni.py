"""accel cni install|uninstall|kubeconfig on the command line: one line per change, JSON, and bad
input as one error line (exit 2), what could not be done exit 1."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from accel.cli import main
from accel.cni import install
from tests.unit.test_cli import one_error_line
from tests.unit.test_cni_install import CONSOLE_SCRIPT, NETWORK


def invoke(*argv, env=None):
    return CliRunner().invoke(main, list(argv), env=env or {})


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    conf, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bin_dir.mkdir()
    (conf / "10-bridge.conflist").write_text(json.dumps(NETWORK, indent=2) + "\n")
    script = tmp_path / "accel-cni"
    script.write_text(CONSOLE_SCRIPT.format(python="/opt/accel/.venv/bin/python"))
    monkeypatch.setattr(install, "console_script", lambda: script)
    return ["--conf-dir", str(conf), "--bin-dir", str(bin_dir)], conf, bin_dir


def test_install_then_uninstall(dirs):
    where, conf, bin_dir = dirs
    result = invoke("cni", "install", *where, env={"ACCEL_STATE_DIR": "/srv/accel"})
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"copied accel-cni to {bin_dir}/accel-cni",
        f"added accel-cni to {conf}/10-bridge.conflist (after bridge, portmap)",
    ]
    assert json.loads((conf / "10-bridge.conflist").read_text())["plugins"][-1] == {
        "type": "accel-cni",
        "stateDir": "/srv/accel",
    }
    again = invoke("cni", "install", *where, env={"ACCEL_STATE_DIR": "/srv/accel"})
    assert again.exit_code == 0 and again.stdout.startswith("nothing to change: accel-cni is in ")
    removed = invoke("cni", "uninstall", *where)
    assert removed.exit_code == 0 and removed.stdout.splitlines() == [
        f"removed accel-cni from {conf}/10-bridge.conflist",
        f"removed {bin_dir}/accel-cni",
    ]
    assert json.loads((conf / "10-bridge.conflist").read_text()) == NETWORK
    nothing = invoke("cni", "uninstall", *where)
    assert nothing.exit_code == 0 and nothing.stdout.startswith("nothing to remove")


def test_json_output(dirs):
    where, conf, bin_dir = dirs
    config = json.dumps({"type": "accel-cni", "stateDir": "/var/lib/accel", "excludeNamespaces": ["kube-system"]})
    document = json.loads(invoke("cni", "install", *where, "--config", config, "--json").stdout)
    assert document["changed"] is True and document["warnings"] == []
    assert document["executable"] == {
        "action": "copied",
        "path": f"{bin_dir}/accel-cni",
        "kind": "copy",
        "reason": None,
    }
    assert document["conflist"] == {
        "action": "added",
        "path": f"{conf}/10-bridge.conflist",
        "after": ["bridge", "portmap"],
        "converted": None,
        "skipped": [],
    }
    removed = json.loads(invoke("cni", "uninstall", *where, "--json").stdout)
    assert removed["changed"] is True and [c["action"] for c in removed["conflists"]] == ["removed"]
    assert removed["executable"]["action"] == "removed"


def test_config_from_a_file_and_the_shim(dirs, tmp_path):
    where, conf, bin_dir = dirs
    path = tmp_path / "accel-cni.json"
    path.write_text(json.dumps({"type": "accel-cni", "logFile": "/var/log/accel-cni.log"}))
    result = invoke("cni", "install", *where, "--config", str(path), "--enter-pid-file", "/run/accel/agent.pid")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"wrote a shim to {bin_dir}/accel-cni (runs accel-cni in the mount "
        "namespace of the PID in /run/accel/agent.pid)"
    )
    assert install.kind_of((bin_dir / "accel-cni").read_bytes()) == "shim"


@pytest.mark.parametrize(
    "config, needles",
    [
        (
            '{"type": "accel-cni", "stateDri": "/var/lib/accel"}',
            ["--config: stateDri: unknown key", "did you mean 'stateDir'?"],
        ),
        ('{"type": "accel-cni", "podInfo": {"source": "kubernetes"}}', ["--config: podInfo.kubeconfig:"]),
        ('{"type": "accel-cni", "capture": {"ProxyPort": "x"}}', ["--config: capture.ProxyPort:"]),
        ('{"type": "accel-cni"', ["--config: not valid JSON"]),
        ('["accel-cni"]', ["--config: (configuration): expected a JSON object"]),
        ("/nonexistent/accel-cni.json", ["--config: cannot read file"]),
        ('{"type": "accel-cni", "convertedFrom": "x.conf"}', ["--config: convertedFrom: accel cni install sets it"]),
    ],
)
def test_a_bad_config_names_the_key(dirs, config, needles):
    where, conf, bin_dir = dirs
    line = one_error_line(invoke("cni", "install", *where, "--config", config))
    for needle in needles:
        assert needle in line, line
    assert list(bin_dir.iterdir()) == [] and json.loads((conf / "10-bridge.conflist").read_text()) == NETWORK


def test_a_bad_default_state_dir_is_named(dirs):
    where, _, _ = dirs
    line = one_error_line(invoke("cni", "install", *where, env={"ACCEL_STATE_DIR": "relative/state"}))
    assert "the default configuration (stateDir from $ACCEL_STATE_DIR): stateDir: expected an absolute path" in line


@pytest.mark.parametrize("command", ["install", "uninstall"])
@pytest.mark.parametrize("option", ["--conf-dir", "--bin-dir"])
def test_a_missing_directory_is_bad_input(dirs, tmp_path, command, option):
    where, _, _ = dirs
    argv = list(where)
    argv[argv.index(option) + 1] = str(tmp_path / "absent")
    line = one_error_line(invoke("cni", command, *argv))
    assert f"{option}: no such directory (got '{tmp_path / 'absent'}')" in line


def test_no_network_yet_is_exit_1_and_changes_nothing(dirs):
    where, conf, bin_dir = dirs
    (conf / "10-bridge.conflist").unlink()
    line = one_error_line(invoke("cni", "install", *where), code=1)
    assert f"no CNI network configuration in {conf}" in line and "try again" in line
    assert list(bin_dir.iterdir()) == []


def test_a_foreign_executable(dirs):
    where, conf, bin_dir = dirs
    (bin_dir / "accel-cni").write_text("#!/bin/sh\necho not accel\n")
    line = one_error_line(invoke("cni", "install", *where), code=1)
    assert "exists and is not accel's" in line
    result = invoke("cni", "uninstall", *where)
    assert (
        result.exit_code == 0
        and result.stderr
        == f"accel: warning: left {bin_dir}/accel-cni: not accel's (neither its console script nor its shim)\n"
    )
    assert (bin_dir / "accel-cni").exists()


def test_a_relative_pid_file_is_bad_input(dirs):
    where, _, _ = dirs
    assert "--enter-pid-file: expected an absolute path" in one_error_line(
        invoke("cni", "install", *where, "--enter-pid-file", "agent.pid")
    )


def test_kubeconfig(tmp_path):
    from kubernetes import config as kube_config

    ca, token = tmp_path / "ca.crt", tmp_path / "token"
    ca.write_text("ca")
    token.write_text("secret")
    out = tmp_path / "kc"
    argv = [
        "cni",
        "kubeconfig",
        "--out",
        str(out),
        "--server-host",
        "fd00::1",
        "--server-port",
        "6443",
        "--ca-file",
        str(ca),
        "--token-file",
        str(token),
    ]
    result = invoke(*argv)
    assert result.exit_code == 0 and result.stdout == f"wrote {out} (server https://[fd00::1]:6443)\n"
    assert kube_config.new_client_from_config(config_file=str(out)).configuration.host == "https://[fd00::1]:6443"
    document = json.loads(invoke(*argv, "--json").stdout)
    assert document["action"] == "unchanged" and document["kubeconfig"]["users"][0]["user"] == {"tokenFile": str(token)}


@pytest.mark.parametrize(
    "argv, needle",
    [
        ([], "--server-host: $KUBERNETES_SERVICE_HOST is not set"),
        (["--server-host", "10.96.0.1"], "--server-port: $KUBERNETES_SERVICE_PORT is not set"),
        (["--server-host", "10.96.0.1", "--server-port", "99999"], "--server-port: not a port from 1 to 65535"),
        (
            ["--server-host", "10.96.0.1", "--server-port", "443", "--ca-file", "/nonexistent/ca.crt"],
            "--ca-file: /nonexistent/ca.crt: no such file",
        ),
    ],
)
def test_kubeconfig_inputs_are_named(tmp_path, argv, needle):
    outside_a_pod = {"KUBERNETES_SERVICE_HOST": None, "KUBERNETES_SERVICE_PORT": None}
    line = one_error_line(invoke("cni", "kubeconfig", "--out", str(tmp_path / "kc"), *argv, env=outside_a_pod))
    assert needle in line, line
    assert not (tmp_path / "kc").exists()


@pytest.mark.parametrize("command", ["install", "uninstall", "kubeconfig"])
def test_help_teaches_what_it_changes_and_its_exit_status(command):
    text = invoke("cni", command, "--help").stdout
    assert "Exit status: 0" in text and "Example" in text and f"accel cni {command}" in text
    if command != "kubeconfig":
        assert "/usr/lib/cni" in text and "/etc/cni/net.d" in text and "/opt/cni/bin" in text
        assert "changes nothing" in text


def test_watch_waits_for_the_network_and_puts_accel_cni_back_after_a_rewrite(tmp_path):
    """--watch as a process of its own: the network plugin writes its file late, then rewrites it
    (as on an upgrade) without accel-cni; SIGTERM ends it, leaving accel-cni in."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    conf, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bin_dir.mkdir()
    shim_target = tmp_path / "agent.pid"  # the shim needs no console script: the test runs anywhere
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accel",
            "cni",
            "install",
            "--conf-dir",
            str(conf),
            "--bin-dir",
            str(bin_dir),
            "--enter-pid-file",
            str(shim_target),
            "--watch",
            "--interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )

    def chained() -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if json.loads((conf / "10-bridge.conflist").read_text())["plugins"][-1]["type"] == "accel-cni":
                    return True
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return False

    try:
        said = watcher.stderr.readline()  # no network yet: it says so, once, and waits
        assert "waiting: no CNI network configuration" in said and watcher.poll() is None
        (conf / "10-bridge.conflist").write_text(json.dumps(NETWORK))
        assert chained()
        (conf / "10-bridge.conflist").write_text(json.dumps(NETWORK))  # the network plugin's upgrade
        assert chained()
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=10)
    assert watcher.returncode == 0, err
    assert "waiting: no CNI network configuration" not in err  # said once, not every interval
    assert out.count("added accel-cni to") == 2
    assert json.loads((conf / "10-bridge.conflist").read_text())["plugins"][-1]["type"] == "accel-cni"
