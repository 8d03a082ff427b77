"""The fallback backend: Istio's native nftables rule set, one atomic transaction.

The transaction goes through the libnftables binding (Debian's python3-nftables) from a thread
that has entered the pod's network namespace, so the kernel sees it in that namespace only.
A transaction is all or nothing; removal deletes exactly the tables the transaction created.
"""

from __future__ import annotations

import re

from ..render import render_nftables
from ..spec import CaptureSpec
from . import routes
from .base import Backend, BackendError, Target
from .libnft import listing, tables_in
from .runner import Runner

_TABLE = re.compile(r"^add table inet (\S+)$", re.MULTILINE)


class NftablesBackend(Backend):
    """Istio's native nftables rule set; with `sets`, its CIDR and port lists as named sets."""

    def __init__(self, sets: bool = False, runner: Runner | None = None):
        self.sets = sets
        self.name = "nftables-sets" if sets else "nftables"
        self.runner = runner or Runner()
        self._applied: dict[str, tuple[list[str], CaptureSpec]] = {}

    def describe(self, target: Target) -> str:
        if self.sets:
            return (
                "Istio's nftables rule set with its CIDR and port lists as named interval sets (beyond "
                "Istio), applied as one libnftables transaction"
            )
        return "Istio's native nftables rule set, applied as one libnftables transaction"

    def apply(self, target: Target, spec: CaptureSpec) -> None:
        """One transaction; on a pod captured already, the same transaction also deletes the tables
        the new spec has no use for, so the switch is one step."""
        previous = self._applied.get(target.netns)
        ours = set(previous[0]) if previous else set()
        transaction = render_nftables(spec, sets=self.sets)
        tables = _TABLE.findall(transaction)
        clash = sorted({f"inet {t}" for t in tables if t not in ours} & tables_in(self.runner, target.netns))
        if clash:
            # The transaction flushes its tables: never let it wipe tables we did not create.
            raise BackendError(f"{self.name}: table {', '.join(clash)} already present in {target.netns}")
        unused = [t for t in sorted(ours) if t not in tables]
        self.runner.nft(target.netns, "".join(f"delete table inet {t}\n" for t in unused) + transaction)
        try:
            if previous is None:
                routes.add_routes(self.runner, target.netns, spec)
            else:
                routes.switch_routes(self.runner, target.netns, previous[1], spec)
        except BaseException:
            if previous is None:
                self._delete(target, tables)
            raise
        self._applied[target.netns] = (tables, spec)

    def record(self, target: Target) -> dict:
        return {"tables": self._applied[target.netns][0]}

    def adopt(self, target: Target, spec: CaptureSpec, record: dict) -> None:
        self._applied[target.netns] = (list(record["tables"]), spec)

    def remove(self, target: Target) -> None:
        state = self._applied.pop(target.netns, None)
        if state is None:
            return
        tables, spec = state
        routes.remove_routes(self.runner, target.netns, spec)
        self._delete(target, tables)

    def _delete(self, target: Target, tables: list[str]) -> None:
        present = tables_in(self.runner, target.netns)
        doomed = [t for t in tables if f"inet {t}" in present]
        if doomed:
            self.runner.nft(target.netns, "".join(f"delete table inet {t}\n" for t in doomed))

    def status(self, target: Target) -> dict:
        tables: dict[str, dict[str, int]] = {}
        for item in listing(self.runner, target.netns):
            if "chain" in item and item["chain"]["table"].startswith("istio-"):
                tables.setdefault(item["chain"]["table"], {}).setdefault(item["chain"]["name"], 0)
            elif "rule" in item and item["rule"]["table"].startswith("istio-"):
                chains = tables.setdefault(item["rule"]["table"], {})
                chains[item["rule"]["chain"]] = chains.get(item["rule"]["chain"], 0) + 1
        return {"backend": self.name, "applied": target.netns in self._applied, "istio_tables": tables}
