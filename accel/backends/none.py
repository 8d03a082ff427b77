"""No capture: the control in every comparison."""

from __future__ import annotations

from ..spec import CaptureSpec
from .base import Backend, Target


class NoneBackend(Backend):
    name = "none"

    def describe(self, target: Target) -> str:
        return "no capture (the control)"

    def apply(self, target: Target, spec: CaptureSpec) -> None:
        pass

    def remove(self, target: Target) -> None:
        pass

    def status(self, target: Target) -> dict:
        return {"backend": self.name, "applied": False}
