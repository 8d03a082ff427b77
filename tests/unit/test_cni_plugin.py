"""accel-cni's protocol without a node: versions, error objects (never a traceback), prevResult
passed through, DEL that never holds a teardown up. The node side runs for real in
tests/integration/test_cni.py."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest

from accel.cni import plugin

TOP = Path(__file__).resolve().parents[2]
PREVIOUS = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"address": "10.99.0.7/24", "gateway": "10.99.0.1", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


def call(command: str, document, tmp_path: Path, **env) -> tuple[int, dict | None]:
    out = io.StringIO()
    environ = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/netns/none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        **env,
    }
    stdin = document if isinstance(document, bytes) else json.dumps(document).encode()
    status = plugin.run(environ, stdin, out)
    text = out.getvalue()
    assert text.count("\n") <= 1 and "Traceback" not in text  # one JSON object or nothing
    return status, json.loads(text) if text else None


def conf(tmp_path: Path, version: str = "1.0.0", **plugin_keys) -> dict:
    return {
        "cniVersion": version,
        "name": "net",
        "type": "accel-cni",
        "stateDir": str(tmp_path / "state"),
        **plugin_keys,
    }


def test_version_lists_what_it_speaks(tmp_path):
    assert call("VERSION", {"cniVersion": "1.0.0"}, tmp_path) == (
        0,
        {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]},
    )


@pytest.mark.parametrize(
    "document, env, code, words",
    [
        (b"{not json", {}, 6, "not JSON"),
        (b"[1]", {}, 6, "JSON object"),
        ({"name": "net", "type": "accel-cni"}, {}, 7, "cniVersion is missing"),
        ({"cniVersion": "2.0.0", "name": "net", "type": "accel-cni"}, {}, 1, "2.0.0"),
        ("conf", {"CNI_CONTAINERID": ""}, 4, "CNI_CONTAINERID"),
        ("conf", {"CNI_NETNS": ""}, 4, "CNI_NETNS"),
        ("conf", {"CNI_ARGS": "oops"}, 4, "KEY=VALUE"),
        ("conf", {"CNI_COMMAND": "GC"}, 4, "CNI_COMMAND"),
        ("conf-statedir", {}, 100, "did you mean 'stateDir'"),
        ("conf-capture", {}, 100, "capture.ProxyPort"),
        ("conf", {}, 11, "not up"),
    ],
)
def test_every_failure_is_a_cni_error_object(tmp_path, document, env, code, words):
    documents = {
        "conf": conf(tmp_path),
        "conf-statedir": {**conf(tmp_path), "statedir": "/x"},
        "conf-capture": conf(tmp_path, capture={"ProxyPort": "port"}),
    }
    given = documents[document] if isinstance(document, str) else document
    env = dict(env)
    status, error = call(env.pop("CNI_COMMAND", "ADD"), given, tmp_path, **env)
    assert status == 1 and error["code"] == code and words in error["msg"], error
    assert error["cniVersion"] == "1.0.0"


def test_errors_speak_the_configurations_version(tmp_path):
    status, error = call("ADD", conf(tmp_path, "0.4.0"), tmp_path)
    assert status == 1 and error["cniVersion"] == "0.4.0" and error["code"] == 11


def test_check_needs_0_4_0(tmp_path):
    status, error = call("CHECK", conf(tmp_path, "0.3.1"), tmp_path)
    assert status == 1 and error["code"] == 1 and "0.4.0" in error["msg"]


def test_a_pod_left_alone_gets_prev_result_through_at_the_configurations_version(tmp_path):
    (tmp_path / "pods").mkdir()
    document = {**conf(tmp_path, podInfo={"source": "dir", "path": str(tmp_path / "pods")}), "prevResult": PREVIOUS}
    assert call("ADD", document, tmp_path) == (0, PREVIOUS)  # no annotation file: not a sidecar pod
    assert call(
        "ADD", conf(tmp_path, "0.4.0", podInfo={"source": "dir", "path": str(tmp_path / "pods")}), tmp_path
    ) == (0, {"cniVersion": "0.4.0"})  # none given: the empty result


def test_a_bad_annotation_is_code_101(tmp_path):
    (tmp_path / "pods").mkdir()
    (tmp_path / "pods" / "shop_web.json").write_text(
        json.dumps(
            {"annotations": {"sidecar.istio.io/status": "{}", "traffic.sidecar.istio.io/includeInboundPorts": "http"}}
        )
    )
    status, error = call(
        "ADD",
        conf(tmp_path, podInfo={"source": "dir", "path": str(tmp_path / "pods")}),
        tmp_path,
        CNI_ARGS="K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web",
    )
    assert status == 1 and error["code"] == 101 and "includeInboundPorts" in error["msg"]


def test_del_never_holds_a_teardown_up(tmp_path):
    assert call("DEL", conf(tmp_path), tmp_path, CNI_NETNS="") == (0, None)  # accel is not up: nothing to do
    assert call("DEL", {**conf(tmp_path), "capture": {"ProxyPort": "port"}}, tmp_path) == (0, None)


def test_a_bug_is_code_199_with_the_traceback_in_the_log_only(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise KeyError("boom")

    monkeypatch.setattr("accel.cni.podinfo.decide", broken)
    status, error = call("ADD", conf(tmp_path, logFile=str(tmp_path / "cni.log")), tmp_path)
    assert status == 1 and error["code"] == 199 and "KeyError" in error["msg"]
    logged = [json.loads(line) for line in (tmp_path / "cni.log").read_text().splitlines()]
    assert "Traceback" in logged[-1]["traceback"] and "Traceback" in capsys.readouterr().err


def test_the_executable_without_a_command_says_what_it_is():
    result = subprocess.run(
        [str(TOP / ".venv" / "bin" / "accel-cni")], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 0 and result.stdout == "" and "chained CNI plugin" in result.stderr
