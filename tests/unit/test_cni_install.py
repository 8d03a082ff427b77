"""accel cni install/uninstall as functions (accel/cni/install.py): the executable and the conflist
together, nothing half-applied; the shim run by sh; the kubeconfig read by the kubernetes client."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from accel.cni import config, conflist, install

ACCEL = {"type": "accel-cni", "stateDir": "/var/lib/accel"}
NETWORK = {
    "cniVersion": "1.0.0",
    "name": "cbr0",
    "plugins": [{"type": "bridge", "bridge": "cni0"}, {"type": "portmap", "capabilities": {"portMappings": True}}],
}
# What pip writes for the accel-cni entry point (the shebang names the venv's python).
CONSOLE_SCRIPT = textwrap.dedent("""\
    #!{python}
    # -*- coding: utf-8 -*-
    import re
    import sys
    from accel.cni.plugin import main
    if __name__ == '__main__':
        sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
        sys.exit(main())
    """)


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A conf dir holding a network, an empty bin dir, and this accel's console script."""
    conf, bin_dir, venv = tmp_path / "net.d", tmp_path / "bin", tmp_path / "venv-bin"
    for directory in (conf, bin_dir, venv):
        directory.mkdir()
    (conf / "10-bridge.conflist").write_text(json.dumps(NETWORK, indent=2) + "\n")
    script = venv / "accel-cni"
    script.write_text(CONSOLE_SCRIPT.format(python="/opt/accel/.venv/bin/python"))
    script.chmod(0o755)
    monkeypatch.setattr(install, "console_script", lambda: script)
    return conf, bin_dir, script


def plugins(conf: Path, name: str = "10-bridge.conflist") -> list:
    return json.loads((conf / name).read_text())["plugins"]


def test_install_copies_the_console_script_then_chains_the_object(node):
    conf, bin_dir, script = node
    done = install.install(conf, bin_dir, ACCEL)
    assert (done.executable.action, done.executable.kind) == ("copied", "copy")
    assert (done.conflist.action, done.conflist.after) == ("added", ("bridge", "portmap"))
    assert done.changed and done.as_json()["conflist"]["path"] == str(conf / "10-bridge.conflist")
    target = bin_dir / "accel-cni"
    assert target.read_bytes() == script.read_bytes() and target.stat().st_mode & 0o777 == 0o755
    assert plugins(conf)[-1] == ACCEL
    stamps = {path: path.stat().st_mtime_ns for path in (target, conf / "10-bridge.conflist")}
    again = install.install(conf, bin_dir, ACCEL)
    assert not again.changed and again.executable.action == again.conflist.action == "unchanged"
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps


def test_the_shim_replaces_a_copy_and_back(node):
    conf, bin_dir, script = node
    install.install(conf, bin_dir, ACCEL)
    done = install.install(conf, bin_dir, ACCEL, enter_pid_file="/run/accel/agent.pid")
    assert (done.executable.action, done.executable.kind, done.conflist.action) == ("updated", "shim", "unchanged")
    text = (bin_dir / "accel-cni").read_text()
    assert text.splitlines()[1] == install.SHIM_MARKER
    assert install.kind_of(text.encode()) == "shim"
    assert install.install(conf, bin_dir, ACCEL).executable.action == "updated"
    assert (bin_dir / "accel-cni").read_bytes() == script.read_bytes()


def test_a_replaced_executable_is_executable(node):
    conf, bin_dir, _ = node
    old = bin_dir / "accel-cni"
    old.write_bytes(install.shim("/run/old.pid"))
    old.chmod(0o600)
    assert install.install(conf, bin_dir, ACCEL).executable.action == "updated"
    assert old.stat().st_mode & 0o777 == 0o755


def test_a_foreign_accel_cni_is_left_alone(node):
    conf, bin_dir, _ = node
    foreign = bin_dir / "accel-cni"
    foreign.write_bytes(b"\x7fELF somebody else's plugin")
    with pytest.raises(install.InstallError, match="exists and is not accel's"):
        install.install(conf, bin_dir, ACCEL)
    assert foreign.read_bytes() == b"\x7fELF somebody else's plugin"
    assert plugins(conf) == NETWORK["plugins"]
    done = install.uninstall(conf, bin_dir)
    assert done.executable.action == "left" and "not accel's" in done.executable.reason
    assert foreign.exists() and not done.changed


def test_no_network_refuses_before_the_executable_is_put_in(node):
    conf, bin_dir, _ = node
    (conf / "10-bridge.conflist").unlink()
    with pytest.raises(conflist.ConflistError, match=f"no CNI network configuration in {conf}"):
        install.install(conf, bin_dir, ACCEL)
    assert list(bin_dir.iterdir()) == []


@pytest.mark.parametrize("had_one", [False, True])
def test_a_failed_conflist_write_takes_the_executable_back(node, monkeypatch, had_one):
    conf, bin_dir, _ = node
    old = b"#!/bin/sh\n" + install.SHIM_MARKER.encode() + b"\nexit 1\n"
    if had_one:
        (bin_dir / "accel-cni").write_bytes(old)

    def full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(conflist.Plan, "apply", full)
    with pytest.raises(OSError, match="No space left"):
        install.install(conf, bin_dir, ACCEL)
    assert [p.read_bytes() for p in bin_dir.iterdir()] == ([old] if had_one else [])
    assert plugins(conf) == NETWORK["plugins"]


@pytest.mark.parametrize(
    "document, key",
    [
        ({"type": "accel-cni", "stateDri": "/var/lib/accel"}, "stateDri"),
        ({"type": "accel-cni", "stateDir": "relative"}, "stateDir"),
        ({"type": "accel-cni", "podInfo": {"source": "etcd"}}, "podInfo.source"),
        ({"type": "bridge"}, "type"),
        ({**ACCEL, "convertedFrom": "10-bridge.conf"}, "convertedFrom"),
    ],
)
def test_a_bad_object_is_refused_before_anything_is_written(node, document, key):
    conf, bin_dir, _ = node
    with pytest.raises(config.ConfigError) as error:
        install.install(conf, bin_dir, document)
    assert error.value.key == key
    assert list(bin_dir.iterdir()) == [] and plugins(conf) == NETWORK["plugins"]


def test_no_console_script_is_said_with_what_to_do(node, monkeypatch, tmp_path):
    conf, bin_dir, _ = node
    monkeypatch.setattr(install, "console_script", lambda: tmp_path / "nowhere" / "accel-cni")
    with pytest.raises(install.InstallError, match="no accel-cni console script at .*reinstall accel"):
        install.install(conf, bin_dir, ACCEL)
    assert list(bin_dir.iterdir()) == [] and plugins(conf) == NETWORK["plugins"]


def test_uninstall_takes_out_what_is_accels(node):
    conf, bin_dir, _ = node
    install.install(conf, bin_dir, ACCEL)
    done = install.uninstall(conf, bin_dir)
    assert [change.action for change in done.conflists] == ["removed"]
    assert (done.executable.action, done.executable.kind) == ("removed", "copy") and done.changed
    assert list(bin_dir.iterdir()) == [] and plugins(conf) == NETWORK["plugins"]
    again = install.uninstall(conf, bin_dir)
    assert not again.changed and again.executable.action == "absent" and again.conflists == ()


def test_a_copy_made_by_another_accel_is_accels(node):
    """Identified by content: another venv's console script for the same entry point."""
    conf, bin_dir, _ = node
    (bin_dir / "accel-cni").write_text(CONSOLE_SCRIPT.format(python="/usr/local/accel/bin/python3"))
    assert install.uninstall(conf, bin_dir).executable.action == "removed"


# -- the shim, run by sh --------------------------------------------------------------------------


def run_shim(
    tmp_path: Path,
    pid_file: str,
    command: str = "ADD",
    path_dirs: tuple[Path, ...] = (),
    executable: Path = Path("/bin/true"),
):
    shim = tmp_path / "accel-cni"
    shim.write_bytes(install.shim(pid_file, executable))
    shim.chmod(0o755)
    env = {"PATH": os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"]), "CNI_COMMAND": command}
    return subprocess.run([str(shim)], input='{"cniVersion": "1.0.0"}', capture_output=True, text=True, env=env)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("content", [None, "", "\n", "not-a-pid\n", "dead", "no-executable"])
def test_the_shim_says_try_again_later_without_a_live_agent(tmp_path, content):
    pid_file = tmp_path / "agent.pid"
    if content is not None:
        pid = {"dead": dead_pid(), "no-executable": os.getpid()}.get(content)
        pid_file.write_text(f"{pid}\n" if pid else content)
    # A PID whose filesystem has no accel-cni at that path is a stale file (or a reused PID).
    result = run_shim(tmp_path, str(pid_file), executable=tmp_path / "nowhere" / "accel-cni")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": f"accel-cni: the accel agent is not running on this node (no live PID in {pid_file}): try again later",
    }
    # DEL does not hold up a pod's teardown: the agent's next `accel up` forgets pods whose namespace is gone
    deleted = run_shim(tmp_path, str(pid_file), command="DEL", executable=tmp_path / "nowhere" / "accel-cni")
    assert (deleted.returncode, deleted.stdout) == (0, "")


def test_the_shim_enters_the_agents_mount_namespace(tmp_path):
    """A stand-in nsenter shows its arguments, the environment and stdin the runtime gave."""
    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "nsenter").write_text('#!/bin/sh\necho "args: $*"\necho "command: $CNI_COMMAND"\ncat\n')
    (fake / "nsenter").chmod(0o755)
    pid_file = tmp_path / "it's here" / "agent.pid"  # a quote and a space, quoted in the script
    pid_file.parent.mkdir()
    pid_file.write_text(f" {os.getpid()}\n")
    result = run_shim(tmp_path, str(pid_file), path_dirs=(fake,), executable=Path("/bin/true"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"args: --target {os.getpid()} --mount -- /bin/true",
        "command: ADD",
        '{"cniVersion": "1.0.0"}',
    ]


def test_the_shim_wants_an_absolute_pid_file():
    with pytest.raises(ValueError, match="absolute"):
        install.shim("agent.pid")


# -- the kubeconfig ---------------------------------------------------------------------------------


@pytest.fixture
def service_account(tmp_path, monkeypatch):
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    (account / "token").write_text("eyJhbGciOiJSUzI1NiJ9.projected")
    monkeypatch.setattr(install, "SERVICE_ACCOUNT", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    return account


def authorization(client) -> str:
    """The Authorization header the client sends (the key it keeps it under differs by version)."""
    [header] = [
        item["value"]
        for item in client.configuration.auth_settings().values()
        if item["in"] == "header" and item["key"] == "authorization"
    ]
    return header


def test_the_kubeconfig_loads_with_the_kubernetes_client(tmp_path, service_account):
    from kubernetes import config as kube_config

    path = tmp_path / "accel-cni.kubeconfig"
    action, document = install.write_kubeconfig(path)
    assert action == "written" and path.stat().st_mode & 0o777 == 0o600
    client = kube_config.new_client_from_config(config_file=str(path))
    assert client.configuration.host == "https://10.96.0.1:443"
    assert authorization(client) == "Bearer eyJhbGciOiJSUzI1NiJ9.projected"
    assert client.configuration.ssl_ca_cert == str(service_account / "ca.crt")
    # the token is referenced, never copied: a rotated token is what the next run reads
    assert "projected" not in path.read_text()
    (service_account / "token").write_text("rotated")
    rotated = kube_config.new_client_from_config(config_file=str(path))
    assert authorization(rotated) == "Bearer rotated"
    mtime = path.stat().st_mtime_ns
    assert install.write_kubeconfig(path)[0] == "unchanged" and path.stat().st_mtime_ns == mtime
    path.chmod(0o644)  # readable by all: the same content is written again, 0600
    assert install.write_kubeconfig(path)[0] == "written" and path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "host, server",
    [
        ("fd00:10:96::1", "https://[fd00:10:96::1]:6443"),
        ("[fd00:10:96::1]", "https://[fd00:10:96::1]:6443"),
        ("kubernetes.default.svc", "https://kubernetes.default.svc:6443"),
    ],
)
def test_the_server_address(tmp_path, service_account, host, server):
    from kubernetes import config as kube_config

    path = tmp_path / "kc"
    install.write_kubeconfig(path, host, 6443)
    assert kube_config.new_client_from_config(config_file=str(path)).configuration.host == server


@pytest.mark.parametrize(
    "unset, field, needle",
    [
        ("KUBERNETES_SERVICE_HOST", "host", "$KUBERNETES_SERVICE_HOST is not set"),
        ("KUBERNETES_SERVICE_PORT", "port", "$KUBERNETES_SERVICE_PORT is not set"),
        ("token", "token_file", "token: no such file (the pod's service account"),
        ("ca.crt", "ca_file", "ca.crt: no such file"),
    ],
)
def test_a_missing_input_is_named(tmp_path, service_account, monkeypatch, unset, field, needle):
    if unset.startswith("KUBERNETES"):
        monkeypatch.delenv(unset)
    else:
        (service_account / unset).unlink()
    with pytest.raises(install.KubeconfigError) as error:
        install.write_kubeconfig(tmp_path / "kc")
    assert error.value.field == field and needle in str(error.value)
    assert not (tmp_path / "kc").exists()


@pytest.mark.parametrize("port", ["0", "65536", "https", ""])
def test_a_bad_port_is_named(tmp_path, service_account, port):
    with pytest.raises(install.KubeconfigError, match="not a port") as error:
        install.write_kubeconfig(tmp_path / "kc", port=port)
    assert error.value.field == "port"
