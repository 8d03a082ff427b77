"""accel-cni in a CNI configuration directory (accel/cni/conflist.py): each case is a directory of
files; its golden (tests/golden/cni/CASE.golden) shows the directory before, after install, after a
second install and after uninstall, with each file's mode and text.

ACCEL_UPDATE_GOLDENS=1 rewrites the goldens (and removes those of cases that are gone); review
each diff (git diff tests/golden/cni) before committing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accel.cni import conflist
from tests.goldens import GOLDEN, check, updating

GOLDENS = GOLDEN / "cni"
ACCEL = {"type": "accel-cni", "stateDir": "/var/lib/accel"}

BRIDGE = {
    "type": "bridge",
    "bridge": "cni0",
    "isGateway": True,
    "ipMasq": True,
    "hairpinMode": True,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]},
}
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
FIREWALL = {"type": "firewall", "backend": "iptables"}
TUNING = {"type": "tuning", "sysctl": {"net.core.somaxconn": "1024"}}


def network(name: str, *plugins: dict, version: str = "1.0.0") -> dict:
    return {"cniVersion": version, "name": name, "plugins": list(plugins)}


# Each case: file name -> content (a dict is written as JSON with indent 2, a str as it is, a
# tuple (content, mode) with that mode; files are 0644 otherwise).
CASES: dict[str, dict[str, object]] = {
    "bridge": {"10-bridge.conflist": network("cbr0", BRIDGE, PORTMAP)},
    "ptp": {
        "10-ptp.conflist": network(
            "ptp-net",
            {
                "type": "ptp",
                "ipMasq": True,
                "mtu": 1460,
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.1.1.0/24",
                    "dataDir": "/run/my-orchestrator/container-ipam-state",
                },
                "dns": {"nameservers": ["10.1.0.1"]},
            },
            version="0.4.0",
        )
    },
    "multi-plugin": {"10-containerd-net.conflist": network("containerd-net", BRIDGE, PORTMAP, FIREWALL, TUNING)},
    "accel-identical": {"10-bridge.conflist": network("cbr0", BRIDGE, PORTMAP, ACCEL)},
    "accel-different": {
        "10-bridge.conflist": network("cbr0", BRIDGE, {"type": "accel-cni", "stateDir": "/run/old"}, PORTMAP)
    },
    "accel-twice": {"10-bridge.conflist": network("cbr0", BRIDGE, dict(ACCEL), PORTMAP, dict(ACCEL))},
    "conf-converted": {"10-bridge.conf": ({"cniVersion": "0.3.1", "name": "mynet", **BRIDGE}, 0o600)},
    "json-converted": {
        "10-net.json": {
            "cniVersion": "0.4.0",
            "name": "kindnet",
            "type": "ptp",
            "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"},
        }
    },
    "lexical-primary": {
        "00-broken.conf": "{not JSON\n",
        "05-list-in-a.conf": network("misplaced", BRIDGE),
        "07-empty.conflist": network("empty"),
        "08-no-name.conflist": {"cniVersion": "1.0.0", "plugins": [BRIDGE]},
        "10-calico.conflist": network("k8s-pod-network", {"type": "calico", "datastore_type": "kubernetes"}, PORTMAP),
        "20-bridge.conflist": network("cbr0", BRIDGE),
        "99-README.txt": "not a configuration: ignored\n",
    },
    "accel-in-two-files": {  # installed when 20-old was the network, then 10-new took its place
        "10-new.conflist": network("new", BRIDGE),
        "20-old.conflist": network("old", BRIDGE, ACCEL),
    },
    "conf-written-again": {  # the network plugin wrote its .conf again after accel made it a list
        "10-bridge.conf": {"cniVersion": "0.3.1", "name": "mynet", **BRIDGE},
        "10-bridge.conflist": {
            "cniVersion": "0.3.1",
            "name": "mynet",
            "plugins": [BRIDGE, {**ACCEL, "stateDir": "/run/old", "convertedFrom": "10-bridge.conf"}],
        },
    },
}


def populate(directory: Path, files: dict[str, object]) -> None:
    for name, content in files.items():
        content, mode = content if isinstance(content, tuple) else (content, 0o644)
        path = directory / name
        text = content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False) + "\n"
        path.write_text(text)
        path.chmod(mode)


def listing(directory: Path) -> str:
    """Every file of the directory (temporary files included: none may be left), mode and text."""
    out = []
    for path in sorted(directory.iterdir()):
        out.append(f"--- {path.name} (mode {path.stat().st_mode & 0o7777:04o})\n{path.read_text()}")
    return "".join(out)


def parsed(directory: Path) -> dict[str, object]:
    """File name -> its JSON (key order included, through dumps), or its text if it is not JSON."""
    result = {}
    for path in sorted(directory.iterdir()):
        try:
            result[path.name] = json.dumps(json.loads(path.read_text()))
        except ValueError:
            result[path.name] = path.read_text()
    return result


def describe(change: conflist.Change) -> str:
    line = f"{change.action} {change.path.name}"
    if change.after:
        line += f" after {', '.join(change.after)}"
    if change.converted is not None:
        line += f" ({'from' if change.action == 'added' else 'to'} {change.converted.name})"
    return line + "".join(f"\n  skipped {note}" for note in change.skipped)


def run(case: str, directory: Path) -> str:
    populate(directory, CASES[case])
    text = f"# before\n{listing(directory)}"
    text += f"# install: {describe(conflist.insert(directory, ACCEL))}\n{listing(directory)}"
    text += f"# install again: {describe(conflist.insert(directory, ACCEL))}\n"
    removed = conflist.remove(directory)
    text += f"# uninstall: {'; '.join(map(describe, removed)) or 'nothing'}\n{listing(directory)}"
    text += f"# uninstall again: {'; '.join(map(describe, conflist.remove(directory))) or 'nothing'}\n"
    return text


@pytest.mark.parametrize("case", CASES)
def test_golden(case, tmp_path):
    check(GOLDENS / f"{case}.golden", run(case, tmp_path))


def test_no_golden_without_a_case():
    stale = sorted(set(GOLDENS.glob("*.golden")) - {GOLDENS / f"{case}.golden" for case in CASES})
    if updating():
        for path in stale:
            path.unlink()
    else:
        assert stale == []


@pytest.mark.parametrize("case", CASES)
def test_install_then_uninstall_is_uninstall_alone(case, tmp_path):
    """Install adds nothing uninstall cannot take away: the same files, the same JSON, keys in the
    same order. Where accel-cni was not there before, that is the directory as it was."""
    alone, installed = tmp_path / "alone", tmp_path / "installed"
    for directory in (alone, installed):
        directory.mkdir()
        populate(directory, CASES[case])
    before = parsed(alone)
    conflist.remove(alone)
    conflist.insert(installed, ACCEL)
    conflist.remove(installed)
    assert parsed(installed) == parsed(alone)
    if "accel-cni" not in json.dumps(CASES[case]):
        assert parsed(installed) == before


def test_an_identical_object_is_not_written_at_all(tmp_path):
    populate(tmp_path, CASES["accel-identical"])
    path = tmp_path / "10-bridge.conflist"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = path.stat()
    change = conflist.insert(tmp_path, dict(ACCEL))
    assert change.action == "unchanged" and change.path == path and change.after == ("bridge", "portmap")
    after = path.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-bridge.conflist"]


def test_a_different_object_is_replaced_where_it_is(tmp_path):
    populate(tmp_path, CASES["accel-different"])
    change = conflist.insert(tmp_path, {**ACCEL, "logFile": "/var/log/accel-cni.log"})
    assert change.action == "updated" and change.after == ("bridge",)
    plugins = json.loads((tmp_path / "10-bridge.conflist").read_text())["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", "accel-cni", "portmap"]
    assert plugins[1] == {**ACCEL, "logFile": "/var/log/accel-cni.log"}


def test_a_converted_conf_comes_back_byte_for_byte_with_its_mode(tmp_path):
    populate(tmp_path, CASES["conf-converted"])
    original = (tmp_path / "10-bridge.conf").read_bytes()
    change = conflist.insert(tmp_path, ACCEL)
    assert change.action == "added" and change.path.name == "10-bridge.conflist"
    assert change.converted == tmp_path / "10-bridge.conf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-bridge.conflist"]
    assert (tmp_path / "10-bridge.conflist").stat().st_mode & 0o777 == 0o600
    document = json.loads((tmp_path / "10-bridge.conflist").read_text())
    assert document["plugins"][-1] == {**ACCEL, "convertedFrom": "10-bridge.conf"}
    assert "cniVersion" not in document["plugins"][0] and "name" not in document["plugins"][0]
    # a second install keeps the record of the conversion
    assert conflist.insert(tmp_path, {**ACCEL, "stateDir": "/run/accel"}).action == "updated"
    assert json.loads((tmp_path / "10-bridge.conflist").read_text())["plugins"][-1]["convertedFrom"] == "10-bridge.conf"
    [restored] = conflist.remove(tmp_path)
    assert restored.action == "restored" and restored.converted == tmp_path / "10-bridge.conf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-bridge.conf"]
    assert (tmp_path / "10-bridge.conf").read_bytes() == original
    assert (tmp_path / "10-bridge.conf").stat().st_mode & 0o777 == 0o600


def test_the_first_valid_file_in_lexical_order_is_the_network(tmp_path):
    populate(tmp_path, CASES["lexical-primary"])
    (tmp_path / "09-a-directory.conflist").mkdir()
    network, skipped = conflist.primary(tmp_path)
    assert network.path.name == "10-calico.conflist"
    assert [note.split(":")[0] for note in skipped] == [
        "00-broken.conf",
        "05-list-in-a.conf",
        "07-empty.conflist",
        "08-no-name.conflist",
    ]
    assert "a list of plugins belongs in a .conflist" in skipped[1]
    # Go's filepath.Ext: a dotfile is a configuration file too, and "." sorts before digits
    populate(tmp_path, {".hidden.conflist": network_document("hidden")})
    assert conflist.primary(tmp_path)[0].path.name == ".hidden.conflist"


def network_document(name):
    return network(name, BRIDGE)


@pytest.mark.parametrize(
    "files, needle",
    [
        ({}, "no .conf, .conflist or .json file"),
        ({"notes.txt": "x"}, "no .conf, .conflist or .json file"),
        (
            {"00-broken.conf": "{", "10-empty.conflist": network("empty")},
            "no valid file: 00-broken.conf: not valid JSON (Expecting property name enclosed in double quotes); "
            '10-empty.conflist: no "plugins" list, or an empty one)',
        ),
    ],
)
def test_no_network_is_an_error_naming_the_directory(tmp_path, files, needle):
    populate(tmp_path, files)
    with pytest.raises(conflist.ConflistError) as error:
        conflist.insert(tmp_path, ACCEL)
    assert str(error.value).startswith(f"no CNI network configuration in {tmp_path} (") and needle in str(error.value)
    assert conflist.remove(tmp_path) == []


def test_a_missing_directory_is_an_error(tmp_path):
    with pytest.raises(conflist.ConflistError, match="no such directory"):
        conflist.insert(tmp_path / "absent", ACCEL)
    with pytest.raises(conflist.ConflistError, match="no such directory"):
        conflist.remove(tmp_path / "absent")


def test_a_file_sorting_between_the_conf_and_its_conflist_stops_the_conversion(tmp_path):
    populate(
        tmp_path,
        {
            "10-bridge.conf": {"cniVersion": "1.0.0", "name": "n", **BRIDGE},
            "10-bridge.conf-old.conflist": network("old", BRIDGE),
        },
    )
    before = listing(tmp_path)
    with pytest.raises(
        conflist.ConflistError, match="10-bridge.conf-old.conflist sorts between 10-bridge.conf and 10-bridge.conflist"
    ):
        conflist.insert(tmp_path, ACCEL)
    assert listing(tmp_path) == before


def test_a_foreign_conflist_of_the_same_stem_is_not_overwritten(tmp_path):
    # a .json sorts after its .conflist: the invalid conflist before it is skipped, yet it is not ours
    populate(tmp_path, {"10-net.conflist": "{}\n", "10-net.json": {"cniVersion": "1.0.0", "name": "n", **BRIDGE}})
    with pytest.raises(conflist.ConflistError, match="10-net.conflist exists already"):
        conflist.insert(tmp_path, ACCEL)
    assert (tmp_path / "10-net.conflist").read_text() == "{}\n"


def test_a_conf_without_a_name_is_not_converted(tmp_path):
    populate(tmp_path, {"10-bridge.conf": {"cniVersion": "1.0.0", **BRIDGE}})
    with pytest.raises(conflist.ConflistError, match='has no "name"'):
        conflist.insert(tmp_path, ACCEL)


def test_a_symlinked_conflist_is_written_through(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    populate(real, CASES["bridge"])
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-bridge.conflist").symlink_to(real / "10-bridge.conflist")
    assert conflist.insert(conf, ACCEL).action == "added"
    assert (conf / "10-bridge.conflist").is_symlink()
    assert json.loads((real / "10-bridge.conflist").read_text())["plugins"][-1] == ACCEL
    assert sorted(p.name for p in real.iterdir()) == ["10-bridge.conflist"]


def test_a_temporary_file_is_one_libcni_skips(tmp_path, monkeypatch):
    """Between writing and renaming, the runtime may list the directory."""
    populate(tmp_path, CASES["bridge"])
    seen = []
    replace = os.replace

    def spy(source, target):
        seen.extend(os.listdir(tmp_path))
        return replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    conflist.insert(tmp_path, ACCEL)
    temporary = [name for name in seen if name != "10-bridge.conflist"]
    assert len(temporary) == 1 and temporary[0].startswith(".")
    assert conflist.extension(temporary[0]) not in conflist.EXTENSIONS


def test_a_failed_write_leaves_the_file_and_no_temporary(tmp_path, monkeypatch):
    populate(tmp_path, CASES["bridge"])
    before = listing(tmp_path)

    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        conflist.insert(tmp_path, ACCEL)
    assert listing(tmp_path) == before


def test_the_object_must_be_accels_and_leave_its_conversion_record_out(tmp_path):
    populate(tmp_path, CASES["bridge"])
    with pytest.raises(ValueError, match="not an accel-cni object"):
        conflist.insert(tmp_path, {"type": "bridge"})
    with pytest.raises(ValueError, match="convertedFrom"):
        conflist.insert(tmp_path, {**ACCEL, "convertedFrom": "x.conf"})


def test_a_conversion_record_naming_another_file_is_not_followed(tmp_path):
    populate(tmp_path, {"10-bridge.conflist": network("n", BRIDGE, {**ACCEL, "convertedFrom": "../../etc/passwd"})})
    [change] = conflist.remove(tmp_path)
    assert change.action == "removed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-bridge.conflist"]


# Round trip over generated networks: JSON values of every kind, keys in any order.
keys = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=8).filter(
    lambda key: key not in ("type", "cniVersion", "name", "plugins")
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=10))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=8,
)
plugins = st.builds(
    lambda kind, rest: {"type": kind, **rest},
    st.sampled_from(["bridge", "ptp", "macvlan", "portmap", "tuning", "bandwidth"]),
    st.dictionaries(keys, values, max_size=4),
)


@settings(max_examples=60, deadline=None)
@given(
    plugin_list=st.lists(plugins, min_size=1, max_size=4),
    single=st.booleans(),
    top=st.dictionaries(keys, values, max_size=2),
)
def test_round_trip_gives_back_every_byte(tmp_path_factory, plugin_list, single, top):
    directory = tmp_path_factory.mktemp("net")
    if single:
        document, name = {"cniVersion": "0.4.0", "name": "net", **plugin_list[0]}, "10-net.conf"
    else:
        document, name = {"cniVersion": "1.0.0", "name": "net", **top, "plugins": plugin_list}, "10-net.conflist"
    populate(directory, {name: document})
    original = (directory / name).read_bytes()
    assert conflist.insert(directory, ACCEL).action == "added"
    assert conflist.insert(directory, ACCEL).action == "unchanged"
    assert [change.action for change in conflist.remove(directory)] == ["restored" if single else "removed"]
    assert [p.name for p in directory.iterdir()] == [name]
    assert (directory / name).read_bytes() == original
