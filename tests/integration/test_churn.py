"""Port capacity under connection churn: an app that makes more short connections than its pod
has source ports, closing first so that each leaves a socket in TIME_WAIT, gets every one of them
through each backend, as fast under eBPF as under iptables.

Under REDIRECT the app's socket stays connected to the original destination, so its source
ports are per destination; a capture that sent every connect to one proxy address and port would
make all destinations share one port space and fail here (EADDRNOTAVAIL) once it is used up."""

import json

import pytest

from accel import inputs
from accel.backends import get_backend
from accel.lab import Lab, LabPlan
from accel.lab.install import PYTHON
from accel.netns import sysctl

pytestmark = pytest.mark.privileged

SPEC = inputs.from_istio_args(list(inputs.ISTIO_INIT_DEFAULT_ARGS), {}, enable_ipv6=True)
APP, PROXY = 1000, 1337
PORT_RANGE = (40000, 41999)  # 2,000 source ports
SERVICES = 64
FAMILIES = {  # connections to SERVICES destinations on port 80, per family
    "ipv4": [f"203.0.113.{n}" for n in range(1, SERVICES + 1)],
    "ipv6": [f"2001:db8:cafe::{n:x}" for n in range(1, SERVICES + 1)],
    "ipv4-mapped": [f"::ffff:203.0.113.{n}" for n in range(1, SERVICES + 1)],
}
CONNECTIONS = 6000  # a family, 3x the port range, all within TIME_WAIT (60 s)
BACKENDS = ("iptables", "nftables", "ebpf")


def test_more_connections_than_source_ports_all_succeed_through_every_backend():
    with Lab(LabPlan(ipv6=True, pod_tcp_ports=(), remote_tcp_ports=(), recording_agents=False)) as lab:
        pod = lab.pods["pod"]
        # the kernel's defaults but a narrow port range: TIME_WAIT is reused only for loopback
        sysctl(pod.netns, "net.ipv4.ip_local_port_range", " ".join(map(str, PORT_RANGE)))
        sysctl(pod.netns, "net.ipv4.tcp_tw_reuse", "2")
        lab.start(
            "pod",
            [PYTHON, "-I", "-S", str(lab.workdir / "agent.pyz"), "sink", "--port", "15001"],
            uid=PROXY,
            gid=PROXY,
            listens=(15001,),
        )
        outcomes, counters = {}, {}
        for name in BACKENDS:
            backend = get_backend(name)
            backend.apply(pod, SPEC)
            try:
                outcomes[name] = {
                    family: json.loads(
                        lab.agent(
                            "pod",
                            "churn",
                            "--dst",
                            ",".join(destinations),
                            "--port",
                            "80",
                            "--count",
                            str(CONNECTIONS),
                            uid=APP,
                            gid=APP,
                        )
                    )
                    for family, destinations in FAMILIES.items()
                }
                if name == "ebpf":
                    counters = backend.status(pod)["counters"]
            finally:
                backend.remove(pod)
    failed = {
        name: {family: result["errors"] for family, result in by_family.items() if result["errors"]}
        for name, by_family in outcomes.items()
    }
    assert failed == {name: {} for name in BACKENDS}
    assert all(result["ok"] == CONNECTIONS for by_family in outcomes.values() for result in by_family.values())
    assert counters["outbound"] == CONNECTIONS * len(FAMILIES) and counters["refused"] == 0
    seconds = {name: sum(result["seconds"] for result in by_family.values()) for name, by_family in outcomes.items()}
    assert seconds["ebpf"] <= 1.5 * seconds["iptables"], seconds
