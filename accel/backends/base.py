"""What every capture backend offers: apply a spec to a pod, remove it, report its status."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from ..spec import CaptureSpec


class BackendError(RuntimeError):
    """An apply or remove that failed. Whatever the apply had done is undone before this is raised."""


class Target(Protocol):
    """A pod as a backend sees it: its network namespace (and, for eBPF, its cgroup)."""

    @property
    def netns(self) -> str: ...  # read-only: a frozen dataclass's field will do


class Backend(ABC):
    name: str

    def describe(self, target: Target) -> str:
        """One line for reports: what this backend uses in this pod, and why."""
        return self.name

    @abstractmethod
    def apply(self, target: Target, spec: CaptureSpec) -> None:
        """Capture the pod's traffic as `spec` says. All or nothing: on failure nothing is left.
        On a pod captured already, switch it to `spec` (in one step where the kernel allows)."""

    @abstractmethod
    def remove(self, target: Target) -> None:
        """Undo apply(): the namespace's rule set is exactly as it was before."""

    @abstractmethod
    def status(self, target: Target) -> dict:
        """What this backend has in the pod now, read from the kernel."""

    def record(self, target: Target) -> dict:
        """What another process needs to change or remove this pod's capture later (JSON): a node
        keeps it in its state."""
        return {}

    # not abstract: a backend that keeps no state has nothing to take over
    def adopt(self, target: Target, spec: CaptureSpec, record: dict) -> None:  # noqa: B027
        """Take over a capture another process applied with `spec`, from its record()."""

    def wait_synced(self, target: Target, timeout: float) -> bool:
        """Wait until capture reflects the pod's namespace as it is now (its addresses and routes);
        False if it does not within `timeout`. Rules are evaluated against the namespace on every
        packet: at once true for them."""
        return True
