"""Istio's golden cases from ../shared/reference/istio, as test parameters."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from accel import inputs
from accel.spec import CaptureSpec

REFERENCE = Path(
    os.environ.get("ACCEL_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference" / "istio")
)
PROBE_LINES = ("iptables-save", "ip6tables-save")
# Group names used by Istio's owner-group cases (and "counter", an nft keyword, for the
# property tests); they must resolve wherever rules are loaded.
CASE_GROUPS = {"java": 20001, "ftp": 20002, "counter": 20003}


@dataclass(frozen=True)
class GoldenCase:
    suite: str  # iptables, nftables or cni-sidecar
    name: str
    raw: dict

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"

    @property
    def backend(self) -> str:
        return "nftables" if self.suite == "nftables" else "iptables"

    @property
    def spec(self) -> CaptureSpec:
        if self.suite == "cni-sidecar":
            keys = ("annotations", "proxy_env", "proxy_runAsUser", "proxy_runAsGroup")
            return inputs.from_annotations({k: self.raw[k] for k in keys}).spec
        return inputs.from_istio_config(self.raw["effective_config"])

    @property
    def expected(self) -> str:
        """The golden file as a renderer must reproduce it (Istio's probe lines removed)."""
        text = (REFERENCE / self.raw["golden"]).read_text()
        if self.suite == "iptables":
            text = "\n".join(line for line in text.split("\n") if line not in PROBE_LINES)
        return text.strip()

    def derived(self, kind: str) -> str | None:
        """The kernel's dump after loading this case, if the reference recorded one."""
        if self.suite == "cni-sidecar":
            return None
        path = REFERENCE / "derived" / kind / f"{self.name}.{kind}"
        return path.read_text() if path.exists() else None


@cache
def cases_json() -> dict:
    path = REFERENCE / "cases.json"
    if not path.exists():
        raise FileNotFoundError(
            f"Istio reference data not found at {REFERENCE} (expected ../shared beside the checkout; "
            "set ACCEL_REFERENCE to its reference/istio directory)"
        )
    return json.loads(path.read_text())


def golden_cases() -> list[GoldenCase]:
    suites = cases_json()["suites"]
    return [
        GoldenCase(suite, case["name"], case)
        for suite in ("iptables", "nftables", "cni-sidecar")
        for case in suites[suite]["cases"]
    ]


def default_sidecar() -> dict:
    """The stock istio-init invocation (derived/ in the reference)."""
    return cases_json()["suites"]["derived"]["default-sidecar"]
