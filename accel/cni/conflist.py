"""accel-cni in a node's CNI configuration directory: found, inserted and removed as files, no root
needed to reason about them.

The node's network is the first valid file, in lexical order, ending .conf, .conflist or .json, as
libcni (containerd, CRI-O, the kubelet before them) and istio-cni's installer choose it. accel-cni
is chained at the end of that file's "plugins"; a single .conf (or .json) becomes a .conflist of the
same stem first, and accel's object remembers the file it was made from ("convertedFrom") so that
removal gives it back. Every other key keeps its value and place; files are replaced atomically,
so a runtime reading the directory sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import constants as c

EXTENSIONS = (".conf", ".conflist", ".json")
SINGLE_EXTENSIONS = (".conf", ".json")  # one plugin per file: libcni reads .json as it reads .conf
CONVERTED_FROM = "convertedFrom"
# libcni ignores a name by its extension only (it lists dotfiles too): a temporary file ends in one it skips.
TEMP_SUFFIX = ".tmp"


class ConflistError(RuntimeError):
    """Something about the configuration directory that keeps accel-cni from being put in; nothing
    was changed."""


@dataclass(frozen=True)
class NetworkFile:
    """A configuration file as a runtime reads it: a list of plugins, or one plugin."""

    path: Path
    document: dict
    is_list: bool

    @property
    def plugins(self) -> list:
        return self.document["plugins"] if self.is_list else [self.document]


@dataclass(frozen=True)
class Change:
    """What insert or remove did (or found already done) to one file."""

    action: str  # insert: added, updated, unchanged; remove: removed, restored, dropped
    path: Path  # the conflist holding (or that held) accel-cni
    after: tuple[str, ...] = ()  # insert: the types of the plugins accel-cni runs after; remove: those left
    converted: Path | None = None  # added: the .conf it was made from; restored: the .conf written back
    skipped: tuple[str, ...] = ()  # insert: files passed over as a runtime passes over them, and why

    def as_json(self) -> dict:
        return {
            "action": self.action,
            "path": str(self.path),
            "after": list(self.after),
            "converted": None if self.converted is None else str(self.converted),
            "skipped": list(self.skipped),
        }


def extension(name: str) -> str:
    """The extension as Go's filepath.Ext sees it: from the last dot, so ".conf" is a .conf file."""
    dot = name.rfind(".")
    return name[dot:] if dot >= 0 else ""


def candidates(conf_dir: Path) -> list[Path]:
    """The directory's configuration files in the order libcni reads them (byte order; Python orders
    str by code point, the same for UTF-8)."""
    try:
        entries = list(os.scandir(conf_dir))
    except FileNotFoundError:
        raise ConflistError(f"{conf_dir}: no such directory") from None
    except NotADirectoryError:
        raise ConflistError(f"{conf_dir}: not a directory") from None
    except OSError as error:
        raise ConflistError(f"{conf_dir}: cannot list: {error.strerror or error}") from None
    return sorted(
        (Path(entry.path) for entry in entries if extension(entry.name) in EXTENSIONS and not entry.is_dir()),
        key=lambda p: p.name,
    )


def read(path: Path) -> NetworkFile:
    """The file as a runtime would use it; ValueError says why a runtime would skip it."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read: {error.strerror or error}") from None
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"not valid JSON ({getattr(error, 'msg', 'nested too deeply')})") from None
    except ValueError as error:  # e.g. a number longer than Python converts
        raise ValueError(f"not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if extension(path.name) == ".conflist":
        if not isinstance(document.get("name"), str):
            raise ValueError('no "name" (libcni refuses a list without one)')
        plugins = document.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise ValueError('no "plugins" list, or an empty one')
        for number, plugin in enumerate(plugins):
            if not isinstance(plugin, dict) or not _type(plugin):
                raise ValueError(f'plugin {number} has no "type"')
        return NetworkFile(path, document, True)
    if not _type(document):
        hint = " (a list of plugins belongs in a .conflist)" if "plugins" in document else ""
        raise ValueError(f'no "type"{hint}')
    return NetworkFile(path, document, False)


def _type(plugin: Mapping) -> str:
    value = plugin.get("type")
    return value if isinstance(value, str) else ""


def primary(conf_dir: Path) -> tuple[NetworkFile, tuple[str, ...]]:
    """The node's network (the first valid file) and the files passed over before it, with why."""
    skipped: list[str] = []
    paths = candidates(conf_dir)
    for path in paths:
        try:
            return read(path), tuple(skipped)
        except ValueError as error:
            skipped.append(f"{path.name}: {error}")
    found = f"no valid file: {'; '.join(skipped)}" if paths else "no .conf, .conflist or .json file"
    raise ConflistError(
        f"no CNI network configuration in {conf_dir} ({found}): the node's network plugin writes "
        "one when it starts; try again then"
    )


def is_accel(plugin: object) -> bool:
    return isinstance(plugin, dict) and plugin.get("type") == c.CNI_PLUGIN_TYPE


@dataclass
class Plan:
    """The writes and removals that insert or remove makes, in the order a runtime must see them."""

    change: Change
    writes: list[tuple[Path, dict, Path]] = field(default_factory=list)  # (path, document, file to take the mode from)
    removals: list[Path] = field(default_factory=list)

    def apply(self) -> Change:
        for path, document, mode_from in self.writes:
            write_json(path, document, mode_from)
        for path in self.removals:
            path.unlink(missing_ok=True)
        return self.change


def plan_insert(conf_dir: Path, plugin: Mapping) -> Plan:
    """What insert will do, decided before anything is written (install checks it first)."""
    if not is_accel(plugin):
        raise ValueError(f"not an accel-cni object (type {plugin.get('type')!r})")
    if CONVERTED_FROM in plugin:
        raise ValueError(f"{CONVERTED_FROM} is accel's own record of a conversion; leave it out")
    network, skipped = primary(conf_dir)
    if not network.is_list:
        return _plan_conversion(conf_dir, network, dict(plugin), skipped)
    plugins = network.document["plugins"]
    ours = [index for index, item in enumerate(plugins) if is_accel(item)]
    if not ours:
        after = tuple(_type(item) for item in plugins)
        document = {**network.document, "plugins": [*plugins, dict(plugin)]}
        return Plan(Change("added", network.path, after, skipped=skipped), [(network.path, document, network.path)])
    first = ours[0]
    wanted = dict(plugin)
    if CONVERTED_FROM in plugins[first]:  # still the record of the .conf this list was made from
        wanted[CONVERTED_FROM] = plugins[first][CONVERTED_FROM]
    after = tuple(_type(item) for item in plugins[:first])
    if len(ours) == 1 and plugins[first] == wanted and list(plugins[first]) == list(wanted):
        return Plan(Change("unchanged", network.path, after, skipped=skipped))
    # One accel-cni, where the first was: a second would capture each pod twice.
    rest = [item for index, item in enumerate(plugins) if index not in ours[1:]]
    rest[first] = wanted
    document = {**network.document, "plugins": rest}
    return Plan(Change("updated", network.path, after, skipped=skipped), [(network.path, document, network.path)])


def _plan_conversion(conf_dir: Path, network: NetworkFile, plugin: dict, skipped: tuple[str, ...]) -> Plan:
    source = network.path
    target = source.with_name(source.stem + ".conflist")
    if not isinstance(network.document.get("name"), str) or not network.document["name"]:
        raise ConflistError(f'{source} has no "name": a conflist made from it would need one; give it one')
    if target.name > source.name:
        # The new file must stay first: nothing may sort between the .conf and its .conflist.
        between = [path.name for path in candidates(conf_dir) if source.name < path.name < target.name]
        if between:
            raise ConflistError(
                f"{between[0]} sorts between {source.name} and {target.name}: the conflist made "
                f"from {source.name} would not be the node's network; rename {between[0]}"
            )
    if os.path.lexists(target) and not _converted_from(target, source.name):
        raise ConflistError(f"cannot make {source.name} into a conflist: {target} exists already (not made by accel)")
    single = {key: value for key, value in network.document.items() if key not in ("cniVersion", "name")}
    document = {key: network.document[key] for key in network.document if key in ("cniVersion", "name")}
    document["plugins"] = [single, {**plugin, CONVERTED_FROM: source.name}]
    # The .conflist is written before the .conf goes: the .conf sorts first, so a runtime reads the
    # old network until the moment the .conf is removed, and accel-cni's from then on.
    return Plan(
        Change("added", target, (_type(single),), converted=source, skipped=skipped),
        [(target, document, source)],
        [source],
    )


def _converted_from(path: Path, name: str) -> bool:
    """Whether path is accel's conversion of the file called name (re-done when its owner wrote it again)."""
    try:
        network = read(path)
    except ValueError:
        return False
    return network.is_list and any(is_accel(item) and item.get(CONVERTED_FROM) == name for item in network.plugins)


def insert(conf_dir: Path | str, plugin: Mapping) -> Change:
    """Chain plugin (accel-cni's object) at the end of the node's network: added, updated in place, or
    unchanged (the file is not written at all)."""
    return plan_insert(Path(conf_dir), plugin).apply()


def plan_remove(conf_dir: Path) -> list[Plan]:
    plans = []
    for path in candidates(conf_dir):
        try:
            network = read(path)
        except ValueError:
            continue
        if not network.is_list or not any(map(is_accel, network.plugins)):
            continue
        plans.append(_plan_removal(network))
    return plans


def _plan_removal(network: NetworkFile) -> Plan:
    plugins = network.document["plugins"]
    origins = [item[CONVERTED_FROM] for item in plugins if is_accel(item) and CONVERTED_FROM in item]
    rest = [item for item in plugins if not is_accel(item)]
    after = tuple(map(_type, rest))
    origin = _valid_origin(origins[0], network.path) if origins else None
    if origin is not None and len(rest) == 1:
        if os.path.lexists(origin):
            # Its owner wrote the .conf again: it is the network, and this list is accel's leftover.
            return Plan(Change("dropped", network.path, after, converted=origin), removals=[network.path])
        # The .conf as it was: cniVersion and name first, where a conf keeps them, then the plugin's keys.
        single = {key: network.document[key] for key in network.document if key in ("cniVersion", "name")}
        single.update(rest[0])
        return Plan(
            Change("restored", network.path, after, converted=origin), [(origin, single, network.path)], [network.path]
        )
    if not rest:  # a list of accel-cni alone is no network: better none than one that sets up no interface
        return Plan(Change("dropped", network.path), removals=[network.path])
    document = {**network.document, "plugins": rest}
    return Plan(Change("removed", network.path, after), [(network.path, document, network.path)])


def _valid_origin(name: object, conflist: Path) -> Path | None:
    """The .conf to write back: a plain name in the same directory with the same stem, nothing else."""
    if not isinstance(name, str) or "/" in name or "\0" in name or name in (".", ".."):
        return None
    if extension(name) not in SINGLE_EXTENSIONS or Path(name).stem != conflist.stem:
        return None
    return conflist.with_name(name)


def remove(conf_dir: Path | str) -> list[Change]:
    """Take every accel-cni object out of every configuration file in conf_dir (install may have put
    it into another file that was the network then); a .conf made into a list comes back. Nothing to
    remove is an empty list."""
    return [plan.apply() for plan in plan_remove(Path(conf_dir))]


def dumps(document: object) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json(path: Path, document: object, mode_from: Path | None = None) -> None:
    write_atomically(path, dumps(document), mode_from=mode_from)


def write_atomically(path: Path, data: bytes, mode: int = 0o644, mode_from: Path | None = None) -> None:
    """Replace path with data in one rename: readers see the old file or the new one. A symlink is
    written through (its target is replaced). The file gets mode, or the mode and owner of
    mode_from (the file it replaces or is made from)."""
    target = Path(os.path.realpath(path))
    status = os.stat(mode_from) if mode_from is not None else None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as error:  # named by the file meant, not the temporary one
        raise type(error)(error.errno, error.strerror, str(target)) from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), status.st_mode & 0o7777 if status else mode)
            if status is not None:
                try:
                    os.fchown(stream.fileno(), status.st_uid, status.st_gid)
                except PermissionError:  # not root: the file stays ours, as any file we write
                    pass
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is not None:
            raise type(error)(error.errno, error.strerror, str(target)) from None
        raise
    with contextlib.suppress(OSError):  # the rename is durable once the directory is
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
