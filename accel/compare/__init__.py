"""`accel compare`: real traffic through each backend, compared with the iptables reference."""

from __future__ import annotations

from dataclasses import dataclass

from .. import inputs
from ..lab import POD_ADDRESSES
from ..spec import CaptureSpec
from .case import Case
from .cases import derive, select
from .run import BackendRun, run_backend

__all__ = ["Comparison", "compare", "lab_spec", "Case", "BackendRun"]


def lab_spec(spec: CaptureSpec) -> CaptureSpec:
    """The spec as istio-iptables would read it inside a lab pod: with --redirect-dns and no
    --capture-all-dns, its nameservers are the pod's resolv.conf, i.e. the lab's resolver."""
    if spec.redirect_dns and not spec.capture_all_dns:
        v4, v6 = POD_ADDRESSES["dns"]
        return spec.replace(dns_servers_v4=(v4,), dns_servers_v6=(v6,) if spec.enable_ipv6 else ())
    return spec


@dataclass
class Comparison:
    spec: CaptureSpec
    cases: list[Case]
    runs: dict[str, BackendRun]
    reference: str

    def agrees(self, backend: str, case: Case) -> bool:
        return self.runs[backend].outcomes[case.name] == self.runs[self.reference].outcomes[case.name]

    def mismatches(self, backend: str) -> int:
        return sum(not self.agrees(backend, case) for case in self.cases)

    @property
    def ok(self) -> bool:
        """Every backend but the control agrees with the reference on every case."""
        return all(self.mismatches(b) == 0 for b in self.runs if b != "none")

    def to_json(self) -> dict:
        return {
            "spec": inputs.to_istio_config(self.spec),
            "reference": self.reference,
            "backends": {name: run.description for name, run in self.runs.items()},
            "cases": [
                {
                    "name": case.name,
                    "description": case.description,
                    "traffic": {
                        "from": case.client,
                        "proto": case.proto,
                        "dst": case.dst,
                        "port": case.port,
                        "uid": case.uid,
                        "gid": case.gid,
                        "bind": case.bind,
                    },
                    "outcomes": {name: run.outcomes[case.name] for name, run in self.runs.items()},
                    "agrees": {name: self.agrees(name, case) for name in self.runs if name != self.reference},
                }
                for case in self.cases
            ],
            "mismatches": {name: self.mismatches(name) for name in self.runs if name != self.reference},
            "conntrack_entries": {name: run.conntrack_entries for name, run in self.runs.items()},
        }


def compare(spec: CaptureSpec, backends: list[str], progress=None, only: tuple[str, ...] = ()) -> Comparison:
    """Run every case (or those named by the patterns in `only`, see cases.select) through every
    backend; the first iptables backend is the reference."""
    spec = lab_spec(spec)
    cases, plan = derive(spec)
    if only:
        cases = select(cases, only)
    reference = next(b for b in backends if b.startswith("iptables"))
    runs = {name: run_backend(name, spec, cases, plan, progress) for name in backends}
    return Comparison(spec, cases, runs, reference)
