"""A soak's verdict: every request at its own destination through the sidecar, every stream
byte-exact, every churn pod's entries gone, the connection maps bounded, no datapath errors, and
the agents' descriptors, pins and memory where they started."""

from __future__ import annotations

import hashlib
import os
import statistics
from collections.abc import Callable

from ..netns import existing_names
from .agent.stream import pattern
from .lab import Lab
from .soak_config import (
    CONNECTION_MAPS,
    ERROR_COUNTERS,
    HANDOFF_BOUND,
    MEMORY_SLACK,
    POD_ID,
    POD_MAPS,
    SERVICE,
    SERVICE_PORT,
    STREAM_BYTES,
    ChurnPod,
    Samples,
    SoakConfig,
)


class SoakVerdict:
    """How a Soak judges its run; a base of Soak, whose workers' records and readings of the node
    these methods use."""

    config: SoakConfig
    problems: list[str]
    samples: Samples
    churn: list[ChurnPod]
    streams: list[dict]
    bursts: dict[str, list[dict]]
    _status: Callable[[], dict]
    _map_entries: Callable[[], dict[str, int]]
    _pins: Callable[[], list[str]]

    def _report(
        self,
        lab: Lab,
        elapsed: float,
        baseline_maps: dict,
        baseline_pins: list,
        fds_before: dict,
        fds_after: dict,
        exited: list,
    ) -> dict:
        problems = list(self.problems)
        problems += [f"accel {' '.join(d.args[3:4])} exited ({d.returncode}): {d.stderr.read()[-200:]}" for d in exited]
        events: dict[str | None, list[dict]] = {}  # by token; None: events of no request
        for event in lab.events():
            events.setdefault(event.get("token"), []).append(event)
        traffic = {}
        for name in ("outbound", "inbound", "dns"):
            results = self.bursts.get(name, [])
            failed = [r for r in results if r["result"] != "ok"]
            misrouted = [
                r["token"] for r in results if r["result"] == "ok" and not _routed(name, r, events.get(r["token"], []))
            ]
            traffic[name] = {
                "requests": len(results),
                "failed": len(failed),
                "misrouted": len(misrouted),
                "per_second": round(len(results) / elapsed, 1),
            }
            if failed:
                problems.append(f"{name}: {len(failed)} of {len(results)} failed, e.g. {failed[0]}")
            if misrouted:
                problems.append(
                    f"{name}: {len(misrouted)} reached another destination than their own, e.g. {misrouted[0]}"
                )
            if not results:
                problems.append(f"{name}: no traffic")
        bad_streams = [s for s in self.streams if not _stream_exact(s, events)]
        traffic["streams"] = {
            "streams": len(self.streams),
            "bytes_checked": 2 * STREAM_BYTES * len(self.streams),
            "not_exact": len(bad_streams),
        }
        if bad_streams:
            problems.append(
                f"streams: {len(bad_streams)} not byte-exact, e.g. {bad_streams[0]['header']['token']}: "
                f"{bad_streams[0]['client']}"
            )
        churn_problems = [c for c in self.churn if "problem" in c]
        problems += [f"churn pod {c['number']}: {c['problem']}" for c in churn_problems[:3]]
        add_ms = [c["add_ms"] for c in self.churn if "add_ms" in c]
        del_ms = [c["del_ms"] for c in self.churn if "del_ms" in c]
        churn = {
            "pods": len(self.churn),
            "problems": len(churn_problems),
            "add_ms_p50": _round(statistics.median(add_ms)) if add_ms else None,
            "add_ms_max": _round(max(add_ms)) if add_ms else None,
            "del_ms_p50": _round(statistics.median(del_ms)) if del_ms else None,
            "del_ms_max": _round(max(del_ms)) if del_ms else None,
        }
        if len(self.churn) < 2:
            problems.append(f"churn: only {len(self.churn)} pods added and removed")

        status = self._status()
        final_maps = self._map_entries()
        pod = next((p for p in status["pods"] if p["id"] == POD_ID), None)
        counters = (pod or {}).get("counters") or {}
        errors = {kind: counters.get(kind, 0) for kind in ERROR_COUNTERS}
        maps = {
            "baseline": {m: baseline_maps.get(m) for m in POD_MAPS + CONNECTION_MAPS if m in baseline_maps},
            "max": {m: self.samples.map_max.get(m) for m in CONNECTION_MAPS if m in self.samples.map_max},
            "final": {m: final_maps.get(m) for m in POD_MAPS + CONNECTION_MAPS if m in final_maps},
        }
        changed = {
            m: (baseline_maps.get(m), final_maps.get(m)) for m in POD_MAPS if final_maps.get(m) != baseline_maps.get(m)
        }
        if changed:
            problems.append(f"maps: pod entries not back where they were (before, after): {changed}")
        if self.samples.map_max.get("handoffs", 0) > HANDOFF_BOUND:
            problems.append(
                f"maps: {self.samples.map_max['handoffs']} handoffs in flight at once (bound {HANDOFF_BOUND})"
            )
        if self.samples.map_max.get("lost", 0) or final_maps.get("lost", 0):
            problems.append("maps: a handoff was lost (an original destination could not be recorded)")
        if any(errors.values()):
            problems.append(f"datapath errors counted for {POD_ID}: {errors}")
        if [p["id"] for p in status["pods"]] != [POD_ID]:
            problems.append(f"pods left in the state: {[p['id'] for p in status['pods']]}")
        pins_after = self._pins()
        if pins_after != baseline_pins:
            problems.append(f"pins: {sorted(set(pins_after) ^ set(baseline_pins))} differ from the start")
        if fds_after != fds_before:
            problems.append(f"file descriptors of the agents: {fds_before} at the start, {fds_after} at the end")
        memory = {}
        for name, series in self.samples.rss.items():
            if not series:
                continue
            first_half = max(series[: max(1, len(series) // 2)])
            memory[name] = {"rss_first": series[0], "rss_first_half_max": first_half, "rss_last": series[-1]}
            if series[-1] > first_half + MEMORY_SLACK:
                problems.append(f"memory: accel {name} grew from {first_half >> 10} KiB to {series[-1] >> 10} KiB")
        if self.samples.scrape_failures:
            problems.append(f"metrics: {self.samples.scrape_failures} of {self.samples.scrapes} scrapes failed")
        leftover = sorted(n for n in existing_names() if n.startswith(f"accel-soak-{os.getpid()}-"))
        if leftover:
            problems.append(f"churn namespaces left: {leftover}")
        return {
            "ok": not problems,
            "pid": os.getpid(),
            "seconds": round(elapsed, 1),
            "sockmap": self.config.sockmap,
            "traffic": traffic,
            "churn": churn,
            "maps": maps,
            "datapath_errors": errors,
            "agents": {
                "memory_bytes": memory,
                "fds": {"start": fds_before, "end": fds_after},
                "scrapes": self.samples.scrapes,
            },
            "pins": {"start": len(baseline_pins), "end": len(pins_after)},
            "leftover_namespaces": leftover,
            "problems": problems,
        }


def _routed(name: str, result: dict, events: list[dict]) -> bool:
    """The request reached its own destination, through the sidecar."""
    sidecar = [e for e in events if e.get("role") == "sidecar"]
    if name == "dns":
        return any(e.get("listener") == "dns" for e in sidecar) and any(e.get("agent") == "dns" for e in events)
    reply = result.get("reply") or {}
    if name == "outbound":
        return reply.get("agent") == "remote" and any(
            e.get("so_original_dst") == f"{SERVICE}:{SERVICE_PORT}" for e in sidecar
        )
    return reply.get("agent") == "pod" and any(e.get("listener") == "inbound" for e in sidecar)


def _expected(seed: int, size: int) -> dict:
    data = pattern(seed, size)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "end": "eof"}


def _stream_exact(stream: dict, events: dict[str | None, list[dict]]) -> bool:
    header, client = stream["header"], stream["client"]
    server = next((e["received"] for e in events.get(header["token"], []) if "received" in e), None)
    return (
        client.get("sent") == "ok"
        and client.get("received") == _expected(header["seed"] + 1, header["reply"])
        and server == _expected(header["seed"], header["send"])
    )


def _round(value: float) -> float:
    return round(value, 1)
