"""accel's packages in layers: every import points down a layer, never up or sideways, so each
layer can be read, tested and changed knowing only the ones below it. A package's modules
may import each other; the lab's agent imports nothing of accel outside itself (it is shipped
into each lab as a zipapp of its own package)."""

from __future__ import annotations

import ast
from pathlib import Path

ACCEL = Path(__file__).resolve().parents[2] / "accel"

# Bottom first. A unit is a package under accel/ or a module directly in it.
LAYERS = [
    ["constants"],
    ["cancel", "faults", "userns", "cgroup"],  # this process and the kernel objects it owns
    ["process"],  # children in cgroups, namespaces, user namespaces
    ["netns", "spec"],
    ["inputs", "trace", "pod_routing"],  # what feeds a spec; what walks rendered rules; ip commands
    ["ebpf"],  # the programs and maps
    ["render"],  # a spec as iptables, nftables, eBPF entries
    ["backends"],  # a rendering applied to a pod, and undone
    ["node"],  # the node agent: pods, state, pins
    ["lab"],  # namespaces as pods, sidecars, traffic
    ["cni", "compare", "bench"],
    ["demo"],
    ["cli"],
    ["__main__"],
]
LAYER = {unit: number for number, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """accel.ebpf.maps -> ebpf; accel.spec -> spec; accel -> accel (the package's __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "accel"


def module_name(path: Path, root: Path) -> tuple[str, str]:
    """A file's module name and the package its relative imports start from."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every accel module a file imports, at the top or inside a function."""
    module, package = module_name(path, root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:  # `from .x import y`: the module x
                found.append((node.lineno, target))
            else:  # `from . import x`: the module x
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "accel" or name.startswith("accel.")]


def violations(root: Path = ACCEL) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        module, _ = module_name(path, root)
        here = unit_of(module)
        for line, target in imports(path, root):
            there = unit_of(target)
            where = f"{path.relative_to(root.parent)}:{line}: {module} imports {target}"
            if module.startswith("accel.lab.agent") and not target.startswith("accel.lab.agent"):
                problems.append(f"{where}: the agent ships alone and imports only itself")
            elif here == there or "accel" in (here, there):
                continue  # within a unit; the package's __init__ names its version only
            elif here not in LAYER or there not in LAYER:
                problems.append(f"{where}: {here if here not in LAYER else there} has no layer in LAYERS")
            elif LAYER[there] >= LAYER[here]:
                problems.append(f"{where}: {there} (layer {LAYER[there]}) is not below {here} (layer {LAYER[here]})")
    return problems


def test_every_import_points_down_a_layer():
    assert violations() == []


def test_every_unit_has_a_layer():
    units = {path.stem for path in ACCEL.glob("*.py")} | {path.parent.name for path in ACCEL.glob("*/__init__.py")}
    assert units - {"__init__"} == set(LAYER)


def test_the_check_can_fail(tmp_path):
    root = tmp_path / "accel"
    for name, text in {
        "__init__.py": "",
        "spec.py": "from .render import iptables\n",  # up
        "render/__init__.py": "from ..spec import CaptureSpec\nfrom accel import spec\n",  # down: fine
        "trace/__init__.py": "from .. import inputs\n",  # sideways
        "lab/agent/common.py": "from ...spec import CaptureSpec\n",  # out of the agent
        "newthing.py": "from . import spec\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = violations(root)
    assert [problem.split(": ", 1)[0] for problem in found] == [
        "accel/lab/agent/common.py:1",
        "accel/newthing.py:1",
        "accel/spec.py:1",
        "accel/trace/__init__.py:1",
    ]
    assert found[1].endswith("newthing has no layer in LAYERS")
    assert found[2].endswith("render (layer 6) is not below spec (layer 3)")
    assert found[3].endswith("inputs (layer 4) is not below trace (layer 4)")
