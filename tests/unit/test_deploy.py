"""deploy/: what a Kubernetes cluster runs to put accel on every node, checked offline. Every
manifest validates against Kubernetes' own schemas in strict mode (an unknown or misspelt field
fails), and each choice a real node depends on is pinned: what is shared with the host and how
mounts propagate, the order of the init steps, the container that keeps accel-cni chained, the PID
file the shim reads (one path under /run, on the host and in every container that names it), what
stopping the agent does (not unload), the plugin's configuration as accel-cni reads it, the
uninstall's patch, RBAC, the image."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from accel.cni import config as cni_config
from accel.cni import install as cni_install

TOP = Path(__file__).resolve().parents[2]
DEPLOY = TOP / "deploy"
# A Kubernetes release still widely run, and the newest whose schemas kubernetes-validate ships
# (it validates offline, from the schemas in its package).
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
MANIFESTS = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
IMAGE_REPOSITORY = "ghcr.io/accel/accel"

STATE = "/var/lib/accel"
# Under /run, which the host empties at boot: a reboot leaves no PID file naming another process.
RUN = "/run/accel"
PID_FILE = f"{RUN}/agent.pid"
KUBECONFIG = f"{STATE}/kubeconfig"
# The image's venv (deploy/Containerfile): the accel-cni the shim runs, by that path.
IMAGE_PYTHON = "/opt/accel/.venv/bin/python"
IMAGE_ACCEL_CNI = "/opt/accel/.venv/bin/accel-cni"
CNI_INSTALL = [
    "accel",
    "cni",
    "install",
    "--conf-dir",
    "/host/etc/cni/net.d",
    "--bin-dir",
    "/host/opt/cni/bin",
    "--config",
    "/etc/accel/cni.json",
    "--enter-pid-file",
    PID_FILE,
]
INIT_COMMANDS = [
    ["accel", "up", "--backend", "auto"],
    ["accel", "cni", "kubeconfig", "--out", KUBECONFIG],
    CNI_INSTALL,
]
# The cni container: the init's install, kept so until the pod stops.
CNI_WATCH = [*CNI_INSTALL, "--watch"]

# Host path -> (where the containers see it, its mount propagation, read-only, the hostPath type).
# A propagation of None is Kubernetes' default (private): nothing is mounted below these later.
HOST_PATHS = {
    "/sys/fs/bpf": ("/sys/fs/bpf", "per container", False, "DirectoryOrCreate"),
    "/sys/fs/cgroup": ("/sys/fs/cgroup", "HostToContainer", False, "Directory"),
    "/proc": ("/host/proc", "HostToContainer", True, "Directory"),
    "/var/run/netns": ("/var/run/netns", "HostToContainer", False, "DirectoryOrCreate"),
    STATE: (STATE, None, False, "DirectoryOrCreate"),
    RUN: (RUN, None, False, "DirectoryOrCreate"),  # the same path: the shim reads it on the host
    "/etc/cni/net.d": ("/host/etc/cni/net.d", None, False, "DirectoryOrCreate"),
    "/opt/cni/bin": ("/host/opt/cni/bin", None, False, "DirectoryOrCreate"),
    "/lib/modules": ("/host/lib/modules", None, True, "Directory"),
    "/usr/src": ("/host/usr/src", None, True, "DirectoryOrCreate"),
}
# accel up may mount bpffs, and `accel down` (run in metrics) unmounts it: both must reach the
# host. follow only writes maps.
BPFFS_PROPAGATION = {"install": "Bidirectional", "metrics": "Bidirectional", "follow": "HostToContainer"}
# install: everything (`accel up`, the headers, the CNI install). metrics: what accel-cni needs,
# since the shim runs it in this container's mount namespace, the PID file it writes, and the CNI
# directories for the uninstall run here. follow: the datapath, the state and the pods'
# namespaces. cni: the CNI directories and the PID file's directory, nothing of the datapath.
RUNTIME_PATHS = {"/sys/fs/bpf", "/sys/fs/cgroup", "/proc", "/var/run/netns", STATE}
MOUNTED_BY = {
    "install": set(HOST_PATHS),
    "metrics": RUNTIME_PATHS | {RUN, "/etc/cni/net.d", "/opt/cni/bin"},
    "follow": RUNTIME_PATHS,
    "cni": {RUN, "/etc/cni/net.d", "/opt/cni/bin"},
}


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def resources() -> list[dict]:
    return [d for name in MANIFESTS for d in documents(name)]


def one(kind: str) -> dict:
    found = [d for d in resources() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/, found {len(found)}"
    return found[0]


def pod_spec() -> dict:
    return one("DaemonSet")["spec"]["template"]["spec"]


def containers() -> dict[str, dict]:
    spec = pod_spec()
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def init_script() -> str:
    command = containers()["install"]["command"]
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 3
    return command[2]


def host_path_of_volumes() -> dict[str, str]:
    return {v["name"]: v["hostPath"]["path"] for v in pod_spec()["volumes"] if "hostPath" in v}


# -- the schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_validates_strictly(manifest, version):
    docs = documents(manifest)
    assert docs, f"{manifest} has no resource"
    for doc in docs:
        assert kubernetes_validate.validate(doc, version, strict=True) == re.match(r"\d+\.\d+", version).group()


def test_strict_validation_rejects_a_misspelt_field():
    daemonset = copy.deepcopy(one("DaemonSet"))
    daemonset["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="hostPid"):
        kubernetes_validate.validate(daemonset, K8S_VERSIONS[0], strict=True)


def test_the_expected_resources():
    assert sorted((d["kind"], d["metadata"]["name"]) for d in resources()) == [
        ("ClusterRole", "accel"),
        ("ClusterRoleBinding", "accel"),
        ("ConfigMap", "accel-cni"),
        ("DaemonSet", "accel"),
        ("Namespace", "accel-system"),
        ("ServiceAccount", "accel"),
    ]


def test_every_namespaced_resource_is_in_accels_namespace():
    namespace = one("Namespace")["metadata"]["name"]
    assert namespace == "accel-system"
    for doc in resources():
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace") == namespace, doc["kind"]
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_every_resource_is_labelled():
    for doc in resources():
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "accel", doc["kind"]


# -- the pod: what it shares with the host -------------------------------------------------------


def test_the_pod_shares_the_hosts_network_and_pids():
    spec = pod_spec()
    assert spec["hostNetwork"] is True  # the CNI is not called for it: it never waits for itself
    assert spec["hostPID"] is True  # the shim's nsenter --target takes a host PID
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_it_runs_on_every_node_before_anything_else():
    spec = pod_spec()
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]


def test_it_updates_one_node_at_a_time_without_overlap():
    strategy = one("DaemonSet")["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


def test_the_selector_matches_the_pods_labels():
    daemonset = one("DaemonSet")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels["app.kubernetes.io/name"] == "accel"


def test_every_container_is_privileged_with_resources():
    assert list(containers()) == ["install", "metrics", "follow", "cni"]
    for name, container in containers().items():
        assert container["securityContext"] == {"privileged": True}, name
        resources_ = container["resources"]
        assert set(resources_) == {"requests", "limits"}, name
        assert set(resources_["requests"]) == set(resources_["limits"]) == {"cpu", "memory"}, name


def test_host_paths_and_their_types():
    volumes = {v["hostPath"]["path"]: v["hostPath"].get("type") for v in pod_spec()["volumes"] if "hostPath" in v}
    assert volumes == {path: kind for path, (_, _, _, kind) in HOST_PATHS.items()}


@pytest.mark.parametrize("name", list(MOUNTED_BY))
def test_each_container_mounts_the_host_paths_it_needs_with_their_propagation(name):
    by_volume = host_path_of_volumes()
    mounts = [m for m in containers()[name]["volumeMounts"] if m["name"] in by_volume]
    assert sorted(by_volume[m["name"]] for m in mounts) == sorted(MOUNTED_BY[name])
    for mount in mounts:
        host = by_volume[mount["name"]]
        where, propagation, read_only, _ = HOST_PATHS[host]
        if host == "/sys/fs/bpf":
            propagation = BPFFS_PROPAGATION[name]
        assert mount["mountPath"] == where, host
        assert mount.get("mountPropagation") == propagation, host
        assert mount.get("readOnly", False) is read_only, host


# -- the init container: datapath, kubeconfig, CNI ---------------------------------------------


def test_init_runs_up_then_kubeconfig_then_cni_install():
    lines = [line.strip() for line in init_script().splitlines()]
    assert lines[0] == "set -eu"  # a failed `accel up` stops before the plugin is chained
    commands = [shlex.split(line) for line in lines if line.startswith("accel ")]
    assert commands == INIT_COMMANDS


def test_init_links_the_kernel_headers_before_up():
    lines = [line.strip() for line in init_script().splitlines()]
    up = lines.index(shlex.join(INIT_COMMANDS[0]))
    made = lines.index('mkdir -p "/lib/modules/$kver"')
    assert made < up
    script = init_script()
    # the node's /usr/src is seen at /host/usr/src, its /lib/modules at /host/lib/modules
    assert "/host/lib/modules/$kver/$1" in script and "path=/host$target" in script
    assert "kheaders" in script and '/usr/src/linux-headers-*-"$arch"' in script


def test_the_shell_scripts_parse():
    scripts = [init_script(), containers()["metrics"]["lifecycle"]["preStop"]["exec"]["command"][2]]
    for script in scripts:
        result = subprocess.run(["/bin/sh", "-n", "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["install", "cni"])
def test_the_configmap_is_mounted_where_cni_install_reads_it(name):
    configmap = one("ConfigMap")
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in containers()[name]["volumeMounts"] if m["name"] == "config")
    assert mount.get("readOnly") is True
    config_path = CNI_INSTALL[CNI_INSTALL.index("--config") + 1]
    assert f"{mount['mountPath']}/cni.json" == config_path
    assert "cni.json" in configmap["data"]


# -- the running containers ----------------------------------------------------------------------


def test_metrics_serves_and_writes_the_pid_file_the_shim_enters():
    metrics = containers()["metrics"]
    assert metrics["command"] == ["accel", "metrics", "--listen", "0.0.0.0:9476", "--pid-file", PID_FILE]
    assert CNI_INSTALL[-2:] == ["--enter-pid-file", PID_FILE]  # the same file
    assert metrics["ports"] == [{"name": "metrics", "containerPort": 9476, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert metrics[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe


def test_stopping_the_agent_removes_the_pid_file_and_never_unloads():
    pre_stop = containers()["metrics"]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:2] == ["/bin/sh", "-c"]
    assert f"rm -f {PID_FILE}" in pre_stop[2]
    for container in containers().values():
        text = json.dumps(container.get("lifecycle", {}))
        assert not re.search(r"\baccel\s+(down|cni\s+uninstall)\b", text), container["name"]
        assert "down" not in text and "uninstall" not in text, container["name"]


def test_follow_keeps_pods_in_step():
    assert containers()["follow"]["command"] == ["accel", "follow"]


def test_the_cni_container_keeps_the_inits_install_with_watch():
    cni = containers()["cni"]
    assert cni["command"] == CNI_WATCH
    # What it keeps is what the init container did: the same install, argument for argument.
    assert [
        shlex.split(line.strip()) for line in init_script().splitlines() if line.strip().startswith("accel cni install")
    ] == [CNI_WATCH[:-1]]
    assert {m["name"] for m in cni["volumeMounts"]} == {"cni-conf", "cni-bin", "config", "run"}
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in cni["env"]  # its messages reach the log as they happen
    assert "lifecycle" not in cni  # stopping it changes nothing on the node


# -- the PID file: one path, on the host and in every container that names it -------------------


def enter_pid_files() -> dict[str, str]:
    """The --enter-pid-file each installer gives (the init's install, the cni container's)."""
    found = {}
    for line in init_script().splitlines():
        if line.strip().startswith("accel cni install"):
            argv = shlex.split(line)
            found["install"] = argv[argv.index("--enter-pid-file") + 1]
    argv = containers()["cni"]["command"]
    found["cni"] = argv[argv.index("--enter-pid-file") + 1]
    return found


def test_the_pid_file_is_one_path_under_run():
    argv = containers()["metrics"]["command"]
    written = argv[argv.index("--pid-file") + 1]
    assert written == PID_FILE
    assert enter_pid_files() == {"install": PID_FILE, "cni": PID_FILE}
    assert PID_FILE.startswith("/run/") and not PID_FILE.startswith(f"{STATE}/")
    # No other agent.pid anywhere in deploy/ (docs/cluster.md, the DaemonSet's scripts and comments).
    for name, text in [
        ("docs/cluster.md", cluster_page()),
        *((name, (DEPLOY / name).read_text()) for name in MANIFESTS),
    ]:
        for found in re.findall(r"[\w./-]*agent\.pid", text):
            assert found == PID_FILE, f"{name}: {found}"


@pytest.mark.parametrize("name", ["install", "metrics", "cni"])
def test_the_pid_files_directory_is_the_hosts_at_the_same_path(name):
    """The shim reads the file on the host by the path the installers gave: each container that
    writes or names it sees the host's directory at that very path."""
    by_volume = host_path_of_volumes()
    directory = str(Path(PID_FILE).parent)
    mounts = [m for m in containers()[name]["volumeMounts"] if m["mountPath"] == directory]
    assert len(mounts) == 1
    assert by_volume.get(mounts[0]["name"]) == directory
    assert not mounts[0].get("readOnly", False)  # metrics writes it; the others name what it writes


def test_the_shim_in_the_image_reads_that_pid_file_and_runs_the_images_accel_cni(monkeypatch):
    monkeypatch.setattr(sys, "executable", IMAGE_PYTHON)  # `accel`, in the image, runs the venv's python
    assert cni_install.console_script() == Path(IMAGE_ACCEL_CNI)
    for name, enter in enter_pid_files().items():
        shim = cni_install.shim(enter).decode()
        assert f"\npid_file={PID_FILE}\n" in shim, name
        assert f'[ ! -x "/proc/$pid/root"{IMAGE_ACCEL_CNI} ]' in shim, name  # a reused PID is no agent
        assert shim.endswith(f'exec nsenter --target "$pid" --mount -- {IMAGE_ACCEL_CNI}\n'), name
    assert f"ln -sfn {IMAGE_ACCEL_CNI} /usr/local/bin/accel-cni" in (DEPLOY / "Containerfile").read_text()


def test_every_container_runs_the_image_of_this_version():
    version = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]["version"]
    image = f"{IMAGE_REPOSITORY}:{version}"
    assert {c["image"] for c in containers().values()} == {image}
    assert one("DaemonSet")["metadata"]["labels"]["app.kubernetes.io/version"] == version
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": IMAGE_REPOSITORY, "newTag": version}]
    assert f"-t {image} ." in (DEPLOY / "Containerfile").read_text()


# -- the uninstall: first without the container that would chain accel-cni again ---------------


def cluster_page() -> str:
    """docs/cluster.md, "Run in a cluster"."""
    return (DEPLOY.parent / "docs" / "cluster.md").read_text()


def uninstall_patch() -> list[dict]:
    """The JSON patch the uninstall in docs/cluster.md applies to the DaemonSet."""
    text = cluster_page()
    found = re.findall(r"kubectl -n accel-system patch ds/accel --type json -p '([^']*)'", text)
    assert len(found) == 1
    return json.loads(found[0])


def apply_json_patch(document: dict, operations: list[dict]) -> dict:
    """RFC 6902's test and remove, enough for the uninstall's patch."""
    document = copy.deepcopy(document)
    for operation in operations:
        *parents, last = [int(p) if p.isdigit() else p for p in operation["path"].split("/")[1:]]
        target = document
        for key in parents:
            target = target[key]
        if operation["op"] == "test":
            assert target[last] == operation["value"], f"test failed: {operation}"
        elif operation["op"] == "remove":
            del target[last]
        else:
            raise AssertionError(f"unexpected operation {operation}")
    return document


def test_the_uninstalls_patch_takes_out_exactly_the_watching_container():
    operations = uninstall_patch()
    assert operations[0]["op"] == "test"  # refuses, rather than remove another container
    patched = apply_json_patch(one("DaemonSet"), operations)
    spec = patched["spec"]["template"]["spec"]
    names = [c["name"] for c in spec["initContainers"] + spec["containers"]]
    assert names == [name for name in containers() if name != "cni"]
    assert not any("--watch" in c["command"] for c in spec["initContainers"] + spec["containers"])
    kubernetes_validate.validate(patched, K8S_VERSIONS[-1], strict=True)


# -- accel-cni's configuration -------------------------------------------------------------------


def plugin_document() -> dict:
    return json.loads(one("ConfigMap")["data"]["cni.json"])


def test_the_plugin_configuration_is_what_accel_cni_reads():
    parsed = cni_config.parse(plugin_document())
    assert parsed.warnings == ()
    assert str(parsed.state_dir) == STATE
    assert isinstance(parsed.pod_info, cni_config.KubernetesSource)
    assert parsed.pod_info.kubeconfig == KUBECONFIG  # what the init container writes
    assert set(parsed.exclude_namespaces) == {"kube-system", one("Namespace")["metadata"]["name"]}
    assert parsed.log_file is not None and str(parsed.log_file.parent) == STATE


def test_a_misspelt_plugin_key_fails():
    with pytest.raises(cni_config.ConfigError, match="stateDirs"):
        cni_config.parse({**plugin_document(), "stateDirs": STATE})


# -- RBAC ----------------------------------------------------------------------------------------


def test_the_cluster_role_grants_exactly_reading_pods():
    assert one("ClusterRole")["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]


def test_the_daemonset_runs_as_the_bound_service_account():
    account, role, binding = one("ServiceAccount"), one("ClusterRole"), one("ClusterRoleBinding")
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]
    assert pod_spec().get("automountServiceAccountToken", True) is True  # the kubeconfig's tokenFile
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}
    ]


# -- kustomize and the image ---------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == MANIFESTS
    assert MANIFESTS == ["configmap.yaml", "daemonset.yaml", "namespace.yaml", "rbac.yaml"]


def containerfile_instructions() -> list[str]:
    """The Containerfile's instructions, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in (DEPLOY / "Containerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return joined


def test_the_image_is_debian_12_made_by_scripts_setup():
    instructions = containerfile_instructions()
    assert re.fullmatch(r"FROM (docker\.io/library/)?debian:12\.\d+(@sha256:[0-9a-f]{64})?", instructions[0])
    assert "COPY . /opt/accel" in instructions
    setup = next(i for i in instructions if "/opt/accel/scripts/setup" in i)
    assert setup.startswith("RUN ")
    steps = [s.strip() for s in setup[4:].split("&&")]
    assert steps.index("rm -rf /opt/accel/.venv /opt/accel/.git") < steps.index("/opt/accel/scripts/setup")
    for tool in ("accel", "accel-cni"):
        assert f"ln -sfn /opt/accel/.venv/bin/{tool} /usr/local/bin/{tool}" in steps
    assert any(s.startswith("rm -rf /var/lib/apt/lists/*") for s in steps[steps.index("/opt/accel/scripts/setup") :])
    assert instructions.index("COPY . /opt/accel") < instructions.index(setup)


def test_the_build_context_keeps_the_hosts_venv_out():
    ignored = (DEPLOY / "Containerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "**/__pycache__", "*.egg-info"} <= set(ignored)
