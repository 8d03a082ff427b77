"""What every accel command shares: one error format, headed command lists, the root check, the
spec inputs, checked option values, progress."""

from __future__ import annotations

import contextlib
import difflib
import faulthandler
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NoReturn

import click
from click.shell_completion import CompletionItem
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import cancel, inputs
from ..spec import CaptureSpec, SpecError

EXIT_FAILED = 1  # a run failed, a backend differed, or root was needed
EXIT_BAD_INPUT = 2
RESOLV_CONF = "/etc/resolv.conf"


class AccelError(click.ClickException):
    """An error as one line on stderr, `accel: error: <what>`, and its exit status."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click declares a ClassVar, but reads it from the instance

    def show(self, file=None) -> None:
        # One line whatever the message quotes: a value holding a newline must not start a second one.
        click.echo(f"accel: error: {' '.join(self.message.splitlines())}", err=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    raise AccelError(message, code)


def _one_line(error: click.ClickException) -> AccelError:
    """click's own errors (a bad option, a bad value, no such command) in accel's format."""
    if isinstance(error, AccelError):
        return error
    message = error.format_message()
    if isinstance(error, click.BadParameter) and not isinstance(error, click.MissingParameter) and error.param:
        message = f"{'/'.join(error.param.opts) or error.param.human_readable_name}: {error.message}"
    if isinstance(error, click.UsageError) and error.ctx is not None:
        message += f" (see '{error.ctx.command_path} --help')"
    return AccelError(message, error.exit_code)


class Group(click.Group):
    """A command group whose help lists its commands under headings, each with its whole summary;
    run bare, it shows that help."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sections: dict[str, list[str]] = {}

    def add_command(self, cmd: click.Command, name: str | None = None, section: str = "Commands") -> None:
        """Register a command under a help heading; a heading shows once a command is in it."""
        super().add_command(cmd, name)
        name = name or cmd.name
        assert name is not None  # click's add_command raised TypeError for a command without one
        self.sections.setdefault(section, []).append(name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit()
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        width = max(map(len, self.commands), default=0)  # one column for the summaries under every heading
        for section, names in self.sections.items():
            # click cuts a summary to fit one line; here it wraps instead
            rows = [
                (name.ljust(width), self.commands[name].get_short_help_str(limit=sys.maxsize))
                for name in names
                if not self.commands[name].hidden
            ]
            if rows:
                with formatter.section(section):
                    formatter.write_dl(rows)


class Main(Group):
    """The `accel` group: every error below it in one format, and SIGTERM unwinding like Ctrl-C."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as error:
            raise _one_line(error) from None

    def invoke(self, ctx: click.Context):
        # SIGTERM and Ctrl-C stop the command at its next safe point (accel/cancel.py), unwinding
        # as an error does, so labs and scratch namespaces are removed on the way out.
        if sys.__stderr__ is not None:  # `kill -USR1 PID` prints where each thread is
            faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
        with cancel.handling():
            try:
                result = super().invoke(ctx)
            except cancel.Cancelled as stop:
                sys.exit(stop.exit_code)
            except (Exception, SystemExit) as error:
                if cancel.received() is None:
                    if isinstance(error, SpecError):
                        raise AccelError(str(error)) from None
                    if isinstance(error, click.ClickException):
                        raise _one_line(error) from None
                    raise
                if not isinstance(error, SystemExit):  # a step the signal cut short, failing its own way
                    click.echo(f"accel: while stopping: {error}", err=True)
            stopped = cancel.interrupted()
        if stopped is not None:
            sys.exit(128 + stopped)
        return result


def needs_root(why: str):
    """Refuse, exit 1, unless root. Decorate the part of a command that does the privileged work,
    so that its input is checked first: bad input exits 2 for everyone."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if os.geteuid() != 0:
                fail(f"{click.get_current_context().command_path} needs root ({why})", EXIT_FAILED)
            return function(*args, **kwargs)

        return wrapper

    return decorate


def spec_options(dns: bool = True):
    """The spec inputs (istio-iptables arguments after --, a config file or pod annotations),
    handed to the command as `spec` and `warnings`: bad input exits 2 before the command runs.
    Without `dns`, the command decides the pod's nameservers, and --dns-servers/--resolv-conf are left out."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(istio_args, istio_config, annotations, ipv6, dns_servers=None, resolv_conf=RESOLV_CONF, **kwargs):
            try:
                spec, warnings = inputs.spec_from_inputs(
                    istio_args, istio_config, annotations, ipv6, dns_servers, resolv_conf
                )
            except SpecError as error:
                raise AccelError(_explain(error, click.get_current_context())) from None
            return function(spec=spec, warnings=warnings, **kwargs)

        options = [
            click.option("--istio-config", "istio_config", metavar="FILE", help="Istio config JSON (Go field names)."),
            click.option("--annotations", metavar="FILE", help="Pod annotations JSON, read as istio-cni does."),
            click.option(
                "--ipv6/--no-ipv6",
                default=None,
                help="Whether the pod has IPv6 (istio-iptables detects it from the pod's first "
                "address). Default: no, or what the config/annotations file says.",
            ),
        ]
        if dns:
            options += [
                click.option(
                    "--dns-servers",
                    metavar="LIST",
                    help="Comma list of the pod's nameservers for --redirect-dns (default: read "
                    "--resolv-conf, as istio-iptables does, only when DNS capture needs them).",
                ),
                click.option(
                    "--resolv-conf",
                    default=RESOLV_CONF,
                    show_default=True,
                    metavar="PATH",
                    help="resolv.conf to read nameservers from.",
                ),
            ]
        options.append(click.argument("istio_args", nargs=-1, type=click.UNPROCESSED))
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def _explain(error: SpecError, ctx: click.Context) -> str:
    """An unknown istio-iptables flag is often one of accel's own options, given after -- or misspelled."""
    if "unknown istio-iptables flag" not in error.reason:
        return str(error)
    own = [
        name
        for param in ctx.command.get_params(ctx)
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    ]
    if error.field in own:
        return f"{error}; {error.field} is an option of {ctx.command_path}: accel's own options go before --"
    istio = [flag for field in inputs.FIELDS for flag in field.flags]
    close = difflib.get_close_matches(error.field, own + istio, n=1, cutoff=0.8)
    if close and close[0] in own:
        return f"{error}; did you mean {ctx.command_path}'s {close[0]}? accel's own options go before --"
    if close:
        return f"{error}; did you mean {close[0]}?"
    return f"{error}; accel's own options go before --"


def refuse_unsupported(spec: CaptureSpec, backends: Iterable[str]) -> None:
    """The eBPF backend's refusals, every one named at once, before anything is built (exit 2)."""
    if "ebpf" not in backends:
        return
    from ..ebpf.maps import UnsupportedSpec, check_supported

    try:
        check_supported(spec)
    except UnsupportedSpec as error:
        fail(f"the ebpf backend cannot capture this spec exactly: {error}; the nftables backend can")


class NameList(click.ParamType):
    """A comma list of names from a vocabulary, without repeats. An empty list, an empty item or an
    unknown name is bad input (istio-iptables' lists drop empty items; accel's own do not)."""

    name = "list"

    def __init__(self, choices: tuple[str, ...], kind: str):
        self.choices, self.kind = choices, kind

    def convert(self, value, param, ctx) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        expected = f"(expected {', '.join(self.choices)})"
        items = [item.strip() for item in value.split(",")]
        if not value.strip():
            self.fail(f"empty list: name at least one {self.kind} {expected}", param, ctx)
        if "" in items:
            self.fail(f"empty {self.kind} name in {value!r} {expected}", param, ctx)
        unknown = [item for item in items if item not in self.choices]
        if unknown:
            self.fail(f"unknown {self.kind} {unknown[0]!r} {expected}", param, ctx)
        return tuple(dict.fromkeys(items))

    def shell_complete(self, ctx, param, incomplete) -> list[CompletionItem]:
        done, _, last = incomplete.rpartition(",")
        prefix = f"{done}," if done else ""
        return [CompletionItem(prefix + name) for name in self.choices if name.startswith(last)]


class OutputFile(click.ParamType):
    """A file a command writes when its work is done: refused at once if it could not be written
    then, rather than after the work."""

    name = "file"

    def __init__(self, suffix: str | None = None, stdout: bool = False):
        self.suffix, self.stdout = suffix, stdout

    def convert(self, value, param, ctx) -> str:
        if self.stdout and value == "-":
            return value
        if not value or "\0" in value:
            self.fail(f"not a file name (got {value!r})", param, ctx)
        if self.suffix and not value.endswith(self.suffix):
            self.fail(f"must name a {self.suffix} file (got {value!r})", param, ctx)
        path = Path(value)
        directory = path.parent
        if path.is_dir():
            self.fail(f"is a directory (got {value!r})", param, ctx)
        if not directory.is_dir():
            reason = "is not a directory" if directory.exists() else "does not exist"
            self.fail(f"directory {str(directory)!r} {reason} (got {value!r})", param, ctx)
        if not os.access(directory, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            self.fail(f"cannot write {value!r}: permission denied or read-only", param, ctx)
        return value

    def shell_complete(self, ctx, param, incomplete) -> list[CompletionItem]:
        return [CompletionItem(incomplete, type="file")]


# --json FILE of the commands that measure: their figures, to a file or (-) stdout
json_figures_option = click.option(
    "--json",
    "json_file",
    type=OutputFile(stdout=True),
    metavar="FILE",
    help="Write the figures as JSON to FILE (- for stdout, instead of the table).",
)


def warn(notes: list[str]) -> None:
    for note in notes:
        click.echo(f"accel: warning: {note}", err=True)


def print_json(document) -> None:
    click.echo(json.dumps(document, indent=2))


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr while a run works (gone when it ends); yields the step callback."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
