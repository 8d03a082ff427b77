"""README.md and every page under docs/ render as meant and say what is true of this checkout: code
fences pair up and a page's title is its only top-level heading (a fence closed early turns the
commands' comments into headings and the prose after into code), relative links and anchors
lead somewhere, docs/layout.md names modules that exist, and every `accel ...` line in a shell
block parses against the real command line (click's parser, without running anything)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from accel.cli import main
from accel.inputs.istio_args import parse_istio_argv
from accel.spec import SpecError

TOP = Path(__file__).resolve().parents[2]
README = TOP / "README.md"
PAGES = [README, *sorted((TOP / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(.*)$")


def name(page: Path) -> str:
    return str(page.relative_to(TOP))


every_page = pytest.mark.parametrize("page", PAGES, ids=name)


def fenced(lines: list[str]) -> tuple[list[bool], list[str]]:
    """Per line, whether it is inside a fenced block (fences included), and what is wrong with the fences."""
    inside, problems, opened = [], [], None
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence and opened is None:
            opened = number
        elif fence and fence.group(1).strip():  # a closing fence has no info string: this line is code
            problems.append(f"line {number}: {line!r} inside the block opened at line {opened}")
        elif fence:
            opened = None
            inside.append(True)
            continue
        inside.append(opened is not None)
    if opened is not None:
        problems.append(f"the block opened at line {opened} is never closed")
    return inside, problems


def section(lines: list[str], heading: str) -> range:
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return range(start + 1, end)


def prose(lines: list[str]) -> list[str]:
    """The lines outside fences (a fenced line becomes empty, so line numbers hold)."""
    inside, _ = fenced(lines)
    return ["" if fence else line for line, fence in zip(lines, inside)]


@every_page
def test_every_fence_is_paired(page):
    assert fenced(page.read_text().splitlines())[1] == []


@every_page
def test_the_title_is_the_only_top_level_heading(page):
    """A shell comment outside a fence ("# as root: ...") renders as a heading."""
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# ")
    assert [line for line in prose(lines) if line.startswith("# ")] == [lines[0]]


def test_the_readmes_title():
    assert README.read_text().splitlines()[0] == "# accel"


def test_usage_commands_are_inside_fences():
    lines = README.read_text().splitlines()
    inside, _ = fenced(lines)
    outside = [
        lines[i] for i in section(lines, "## Usage") if lines[i].startswith(("accel ", "scripts/")) and not inside[i]
    ]
    assert outside == []


def test_the_checks_can_fail():
    lines = ["# t", "```sh", "accel render", "```", "# comment", "accel bench", "```", "prose"]
    inside, problems = fenced(lines)
    assert inside == [False, True, True, True, False, False, True, True]
    assert problems == ["the block opened at line 7 is never closed"]
    inside, problems = fenced(["```sh", "a", "```sh", "b", "```"])  # a closing fence has no info string
    assert inside == [True] * 5 and problems == ["line 3: '```sh' inside the block opened at line 1"]


# -- links: every relative one leads to a file, and its #anchor to a heading there ---------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), the text may span lines
CODE_SPAN = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^#{1,6} (.+)$")


def anchors(lines: list[str]) -> set[str]:
    """The #anchors GitHub gives a page's headings: lowercase, punctuation dropped, spaces as
    hyphens; a repeated one gets -1, -2, ..."""
    found: set[str] = set()
    for line in prose(lines):
        heading = HEADING.match(line)
        if heading:
            anchor = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            repeated = anchor
            for n in range(1, 100):
                if repeated not in found:
                    break
                repeated = f"{anchor}-{n}"
            found.add(repeated)
    return found


def broken_links(lines: list[str], directory: Path) -> list[str]:
    """What is wrong with the relative links of a page in directory (its fences and code spans aside)."""
    problems = []
    text = "\n".join(CODE_SPAN.sub("", line) for line in prose(lines))
    for link in LINK.finditer(text):
        target = link.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not this checkout's
            continue
        number = text.count("\n", 0, link.start()) + 1
        path, _, anchor = target.partition("#")
        file = (directory / path) if path else None
        if file is not None and not file.exists():
            problems.append(f"line {number}: {target}: no such file")
        elif anchor and (file is None or file.suffix == ".md"):
            page = file.read_text().splitlines() if file is not None else lines
            if anchor not in anchors(page):
                problems.append(f"line {number}: {target}: no such heading")
    return problems


@every_page
def test_every_relative_link_leads_somewhere(page):
    assert broken_links(page.read_text().splitlines(), page.parent) == []


def test_the_link_check_can_fail(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Limits: where eBPF differs, and why\n")
    lines = [
        "# Page",
        "## A heading",
        "[ok](other.md), [ok](other.md#limits-where-ebpf-differs-and-why), [ok](#a-heading),",
        "[web](https://example.org/x), `[code](missing.md)`, [gone](missing.md), [no](other.md#nope),",
        "[across",
        "lines](#nowhere)",
        "```",
        "[in a fence](missing.md)",
        "```",
    ]
    assert broken_links(lines, tmp_path) == [
        "line 4: missing.md: no such file",
        "line 4: other.md#nope: no such heading",
        "line 5: #nowhere: no such heading",
    ]
    assert anchors(["# T", "## `--sockmap`, off", "## A", "## A"]) == {"t", "--sockmap-off", "a", "a-1"}


# -- docs/layout.md names what exists -------------------------------------------------------------

LAYOUT = TOP / "docs" / "layout.md"


def layout_entries() -> dict[str, str]:
    """{the path in the first column: its description, continuation lines included}."""
    lines = LAYOUT.read_text().splitlines()
    inside, _ = fenced(lines)
    entries: dict[str, str] = {}
    last = None
    for line, fence in zip(lines, inside):
        if not fence or FENCE.match(line):
            continue
        if line[:1].strip():
            last, _, description = line.partition(" ")
            entries[last] = description
        elif last is not None:
            entries[last] += " " + line.strip()
    return entries


def test_the_layout_names_what_exists():
    entries = layout_entries()
    missing = [path for path in entries if not list(TOP.glob(path.rstrip("/")))]
    # the modules an accel/ entry names (bpf/accel.h and the like are another directory's)
    for path, description in entries.items():
        if path.startswith("accel/") and path.endswith("/"):
            for module in re.findall(r"(?<![\w/.])(\w+\.(?:py|c))\b", description):
                if not list((TOP / path).rglob(module)):
                    missing.append(f"{path}{module}")
    assert missing == []
    top = sorted(
        f"accel/{p.name}/" if p.is_dir() else f"accel/{p.name}"
        for p in (TOP / "accel").iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and not p.name.startswith("__"))
    )
    assert [path for path in top if path not in entries] == []


# -- every accel command in a shell block parses ----------------------------------------------------

SHELL = {"sh", "bash", "shell", "console"}
SUBSTITUTION = re.compile(r"\$\((?:[^()]|\([^()]*\))*\)")  # $(...), with one level of (...) inside
FD_REDIRECT = re.compile(r"(?<!\S)\d+(?=[<>])")  # the 2 of 2>&1
CONTROL = {"|", "||", "&&", ";", "&", "|&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Whether these name an existing file is up to the machine that runs the command, not the page.
FILESYSTEM_TYPES = {"path", "file", "directory", "filename", "dir"}


def shell_blocks(lines: list[str]) -> Iterator[tuple[int, bool, list[str]]]:
    """(number of its first line, whether it is a console transcript, its lines) per shell block."""
    opened = None
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence and opened is None:
            opened, info, body = number, fence.group(1).split(), []
        elif fence and not fence.group(1).strip():
            if info and info[0] in SHELL:
                yield opened + 1, info[0] == "console", body
            opened = None
        elif opened is not None:
            body.append(line)


def words(text: str) -> list[str]:
    """A command line as the shell splits it; each $(...) one word of its own, `$(...)`."""
    text = FD_REDIRECT.sub("", SUBSTITUTION.sub("$(...)", text))
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    return list(lexer)


def simple_commands(first: int, console: bool, body: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, words) of each simple command in a block: backslash continuations joined, a
    quote left open carried on to the next line, pipes, lists and redirections taken apart. In a
    console block only the lines after a `$ ` or `# ` prompt are commands."""
    pending, start = "", None
    for number, line in enumerate(body, first):
        if console and not pending:
            if not line.startswith(("$ ", "# ")):
                continue
            line = line[2:]
        start = number if start is None else start
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        try:
            split = words(pending)
        except ValueError:  # a quotation still open: the command goes on
            pending += "\n"
            continue
        command: list[str] = []
        redirected = False
        for word in [*split, ";"]:
            if word in CONTROL:
                if command:
                    yield start, command
                command = []
            elif redirected:
                redirected = False
            elif word[:1] in ("<", ">") or word in {"&>", "&>>"}:
                redirected = True
            else:
                command.append(word)
        pending, start = "", None
    if pending:
        yield start, ["#", "never ends:", pending.rstrip()]


def accel_args(command: list[str]) -> list[str] | None:
    """The arguments of an `accel` invocation (after sudo, env and variable assignments; inside
    `kubectl exec ... --`), None for any other command. `...` stands for arguments left out.
    accel-cni is not checked: it is not a click command (the runtime drives it by CNI_COMMAND)."""
    while command and (command[0] in {"sudo", "env"} or ASSIGNMENT.match(command[0])):
        command = command[1:]
        while command and command[0].startswith("-") and command[0] != "--":  # sudo -E, env -i
            command = command[1:]
    if not command:
        return None
    if command[0] == "kubectl" and "exec" in command and "--" in command:
        return accel_args(command[command.index("--") + 1 :])
    if command[0] == "accel" or command[0].endswith("/accel"):
        return [word for word in command[1:] if word != "..."]
    if command[:3] == ["python", "-m", "accel"] or command[:3] == ["python3", "-m", "accel"]:
        return [word for word in command[3:] if word != "..."]
    return None


def parse(args: list[str]) -> str | None:
    """None if `accel ARGS` parses as the real command line would, else what click says. Options
    are parsed and converted, nothing runs; istio-iptables arguments go through accel's own flag
    parser. A word from "$VAR" or $(...) is opaque: an error that names it is not the page's."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ctx = main.make_context("accel", list(args))
            command: click.Command = main
            while isinstance(command, click.Group):
                protected = getattr(ctx, "_protected_args", None)  # click 8.2 and later
                rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
                if not rest:
                    break
                name, found, rest = command.resolve_command(ctx, rest)
                assert found is not None and name is not None
                command = found
                ctx = command.make_context(name, rest, parent=ctx)
            if ctx.params.get("istio_args"):
                parse_istio_argv(list(ctx.params["istio_args"]))
    except click.exceptions.Exit:  # --help, --version, a group without its command: help
        return None
    except click.ClickException as error:
        message = error.format_message()
        if any(word in message for word in args if "$" in word):
            return None
        return message
    except SpecError as error:
        return str(error)
    return None


def bad_commands(lines: list[str]) -> list[str]:
    problems = []
    for first, console, body in shell_blocks(lines):
        for number, command in simple_commands(first, console, body):
            if command[0] == "#":
                problems.append(f"line {number}: {' '.join(command[1:])}")
                continue
            args = accel_args(command)
            if args is not None and (message := parse(args)) is not None:
                problems.append(f"line {number}: accel {shlex.join(args)}: {message}")
    return problems


@pytest.fixture
def cli(monkeypatch):
    """The command line, its file and directory options taking any name (the page's machine is not this one)."""

    def walk(command: click.Command) -> Iterator[click.Parameter]:
        yield from command.params
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                yield from walk(sub)

    for param in walk(main):
        if param.type.name in FILESYSTEM_TYPES:
            monkeypatch.setattr(param, "type", click.STRING)


@every_page
def test_every_accel_command_parses(page, cli):
    assert bad_commands(page.read_text().splitlines()) == []


def test_the_command_check_can_fail(cli):
    lines = [
        "```sh",
        "accel bench --no-such-option",  # 2
        "sudo FOO=1 accel no-such-command | less",  # 3
        "accel render --backend iptables -- --no-such-flag",  # 4
        "accel status \\",  # 5
        "  --bogus && echo done",
        "accel bench --pods many",  # 7
        "accel render -- -i '*' -b '*' > rules.txt 2>&1 && accel probe --json; accel --help",
        "echo accel render --bogus; sudo accel pod add --netns \"$NETNS\" --id pod-a -- -i '*'",
        "for pod in $(kubectl get pods -o name); do",
        '  kubectl exec "$pod" -c metrics -- \\',
        "    accel cni uninstall --conf-dir /host/etc/cni/net.d --bin-dir /no/such/dir",
        '  kubectl exec "$pod" -- accel pod del --nope \'',  # 13: a quote carried on
        "  '",
        "done",
        "accel cni install ... --watch",
        'accel bench --pods "$N" --json "$(mktemp)"',
        "accel pod",
        "```",
        "```json",
        "accel render --bogus",
        "```",
        "```console",
        "$ accel no-such-command",  # 24
        "accel render --bogus",
        "```",
    ]
    problems = bad_commands(lines)
    assert [problem.split(": ")[0] for problem in problems] == [
        "line 2",
        "line 3",
        "line 4",
        "line 5",
        "line 7",
        "line 13",
        "line 24",
    ]
    assert "No such option '--no-such-option'" in problems[0]
    assert "No such command 'no-such-command'" in problems[1]
    assert "unknown istio-iptables flag" in problems[2]
    assert "No such option '--bogus'" in problems[3]
    assert "'many' is not a valid integer" in problems[4]
    assert problems[5].startswith("line 13: accel pod del --nope")
    assert list(simple_commands(1, False, ["accel render '"])) == [(1, ["#", "never ends:", "accel render '"])]
