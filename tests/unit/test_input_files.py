"""Input files that cannot be read as what they should be: one SpecError naming the option, the file
and why, never a traceback; through the CLI, one line and exit 2."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from accel import inputs
from accel.cli import main
from accel.spec import SpecError

BAD_JSON = {
    "not-utf8": (b'{"ProxyPort": "15001\xff"}', "not UTF-8 text (byte 0xff at offset 20)"),
    "not-json": (b"{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1"),
    "too-deep": (b"[" * 100_000 + b"]" * 100_000, "JSON nested deeper than Python's recursion limit"),
    "not-an-object": (b"[1, 2]", "expected a JSON object, not an array"),
    "null": (b"null", "expected a JSON object, not null"),
    "huge-number": (b'{"ProxyPort": ' + b"1" * 5000 + b"}", "not valid JSON: Exceeds the limit"),
}


@pytest.mark.parametrize("label", ["--istio-config", "--annotations"])
@pytest.mark.parametrize("name", BAD_JSON)
def test_malformed_json_names_the_file_and_why(tmp_path, label, name):
    content, reason = BAD_JSON[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    with pytest.raises(SpecError) as error:
        inputs.load_json(str(path), label)
    assert (error.value.field, error.value.value) == (label, str(path))
    assert error.value.reason.startswith(reason), error.value.reason


def unreadable(tmp_path, monkeypatch) -> dict[str, tuple[str, str]]:
    """Paths that cannot be read, and why."""
    denied = tmp_path / "denied.json"
    denied.write_text("{}")
    original = Path.read_bytes

    def read_bytes(path):  # tests may run as root, whom file modes do not stop
        if path == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return {
        "missing": (str(tmp_path / "missing.json"), "cannot read file: No such file or directory"),
        "directory": (str(tmp_path), "cannot read file: Is a directory"),
        "denied": (str(denied), "cannot read file: Permission denied"),
        "nul": ("a\0b", "cannot read file: embedded null byte"),
    }


def test_unreadable_files_name_the_file_and_why(tmp_path, monkeypatch):
    for path, reason in unreadable(tmp_path, monkeypatch).values():
        for read in (lambda: inputs.load_json(path, "--istio-config"), lambda: inputs.read_nameservers(path)):
            with pytest.raises(SpecError) as error:
                read()
            assert error.value.value == path and error.value.reason == reason


def test_resolv_conf_bytes_matter_only_on_nameserver_lines(tmp_path):
    # Istio's reader (miekg/dns) splits lines of bytes: a Latin-1 comment is no problem.
    resolv = tmp_path / "resolv.conf"
    resolv.write_bytes(b"# caf\xe9\nsearch d\xe9v.local\nnameserver 10.96.0.10\n")
    assert inputs.read_nameservers(str(resolv)) == ["10.96.0.10"]
    resolv.write_bytes(b"nameserver 10.96.0.\xff\n")
    with pytest.raises(SpecError, match="not an IP address") as error:
        inputs.from_istio_args(["--redirect-dns"], {}, resolv_conf=str(resolv))
    assert error.value.field == f"nameserver in {resolv}"


def one_line_refusal(*argv) -> str:
    result = CliRunner().invoke(main, list(argv), env={})
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("accel: error: "), lines
    return lines[0]


@pytest.mark.parametrize("name", BAD_JSON)
def test_the_cli_refuses_bad_files_in_one_line(tmp_path, name):
    content, reason = BAD_JSON[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    for option in ("--istio-config", "--annotations"):
        line = one_line_refusal("render", option, str(path))
        assert f"{option}: {reason}" in line and repr(str(path)) in line


def test_the_cli_refuses_unreadable_files_in_one_line(tmp_path, monkeypatch):
    for path, reason in unreadable(tmp_path, monkeypatch).values():
        for option in ("--istio-config", "--annotations"):
            assert f"{option}: {reason}" in one_line_refusal("render", option, path)
        line = one_line_refusal("render", "--resolv-conf", path, "--", "--redirect-dns")
        assert f"--resolv-conf: {reason}" in line
