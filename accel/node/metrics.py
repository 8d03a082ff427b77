"""accel metrics: the node's state as Prometheus metrics, read from the state directory and the pins
at every scrape. It only reads: killing it changes nothing for traffic. No IP address is a label."""

from __future__ import annotations

import threading
import urllib.request

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import lifecycle
from .paths import NodePaths

DEFAULT_LISTEN = "127.0.0.1:9476"
ERRORS = ("refused", "no_memory", "handoff_failed", "lost", "foreign_listener")


class NodeCollector:
    def __init__(self, paths: NodePaths):
        self.paths = paths

    def collect(self):
        document, problems = lifecycle.status(self.paths)
        yield GaugeMetricFamily("accel_up", "1 when accel is up on this node", value=1 if document["up"] else 0)
        yield GaugeMetricFamily("accel_degraded", "1 when accel status reports a problem", value=1 if problems else 0)
        if not document["up"]:
            return
        info = GaugeMetricFamily("accel_datapath_info", "The node's capture backend", labels=["backend", "version"])
        info.add_metric([document["backend"], document["version"]], 1)
        yield info
        yield GaugeMetricFamily("accel_pods", "Pods captured on this node", value=len(document["pods"]))
        yield GaugeMetricFamily(
            "accel_last_up_timestamp_seconds", "When accel up last ran to the end", value=document["up_at"]
        )
        redirects = CounterMetricFamily(
            "accel_redirects", "Connections and DNS queries sent to the sidecar", labels=["pod", "direction"]
        )
        passed = CounterMetricFamily(
            "accel_passed", "Connections and datagrams of captured pods left alone", labels=["pod"]
        )
        errors = CounterMetricFamily(
            "accel_datapath_errors",
            "What the datapath refused or could not record (see docs/ebpf.md, Limits)",
            labels=["pod", "kind"],
        )
        messages = CounterMetricFamily(
            "accel_shortcut_messages",
            "Sends between an app and its sidecar put straight into the other end's receive queue (--sockmap)",
            labels=["pod"],
        )
        carried = CounterMetricFamily("accel_shortcut_bytes", "Bytes the short-circuit carried", labels=["pod"])
        for pod in document["pods"]:
            counters = pod.get("counters")
            if counters is None:
                continue
            for direction in ("outbound", "inbound", "dns"):
                redirects.add_metric([pod["id"], direction], counters[direction])
            passed.add_metric([pod["id"]], counters["passed"])
            for kind in ERRORS:
                errors.add_metric([pod["id"], kind], counters[kind])
            if "shortcut_messages" in counters:
                messages.add_metric([pod["id"]], counters["shortcut_messages"])
                carried.add_metric([pod["id"]], counters["shortcut_bytes"])
        yield from (redirects, passed, errors, messages, carried)
        if "maps" in document:
            entries = GaugeMetricFamily(
                "accel_bpf_map_entries", "Entries in each of the datapath's maps", labels=["map"]
            )
            capacity = GaugeMetricFamily(
                "accel_bpf_map_capacity", "Capacity of each of the datapath's maps", labels=["map"]
            )
            for item in document["maps"]:
                if item["entries"] is not None:
                    entries.add_metric([item["name"]], item["entries"])
                if item["capacity"]:
                    capacity.add_metric([item["name"]], item["capacity"])
            yield from (entries, capacity)


def scrape(port: int, host: str = "127.0.0.1") -> str:
    """What a running `accel metrics` answers on /metrics (OSError if it does not)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def serve(paths: NodePaths, listen: str = DEFAULT_LISTEN, stop: threading.Event | None = None) -> None:
    """Serve /metrics on ADDR:PORT until `stop` is set (or for ever)."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(NodeCollector(paths))
    server, thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        thread.join()
