"""`accel cni install|uninstall|kubeconfig`: accel-cni put into a node's CNI configuration and taken
out again, and the kubeconfig it reads pods with. Files only: none needs the node to be up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from ..cancel import until_signalled
from ..node.paths import DEFAULT_STATE, ENV_STATE
from .common import EXIT_FAILED, Group, OutputFile, fail, print_json, warn

CONF_DIR, BIN_DIR = "/etc/cni/net.d", "/opt/cni/bin"  # upstream's, and containerd's and CRI-O's defaults

DIRECTORIES = (
    "\b\nWhere: the container runtime's CNI directories (containerd's conf_dir and bin_dir,\n"
    "  CRI-O's network_dir and plugin_dirs):\n"
    f"  --conf-dir  the CNI network configuration directory (default {CONF_DIR})\n"
    f"  --bin-dir   where the runtime finds plugins (default {BIN_DIR}; Debian's\n"
    "              containernetworking-plugins are in /usr/lib/cni)\n"
)


class Directory(click.ParamType):
    """An existing directory; one that is not there is bad input, said with what it should be."""

    name = "dir"

    def __init__(self, what: str):
        self.what = what

    def convert(self, value, param, ctx) -> Path:
        path = Path(value)
        if not path.is_dir():
            reason = "not a directory" if path.exists() else "no such directory"
            self.fail(f"{reason} (got {value!r}): give {self.what}", param, ctx)
        return path

    def shell_complete(self, ctx, param, incomplete) -> list[CompletionItem]:
        return [CompletionItem(incomplete, type="dir")]


def directory_options(function):
    for option in reversed(
        [
            click.option(
                "--conf-dir",
                type=Directory("the runtime's CNI configuration directory"),
                default=CONF_DIR,
                show_default=True,
                help="The CNI network configuration directory.",
            ),
            click.option(
                "--bin-dir",
                type=Directory("the directory the runtime runs CNI plugins from"),
                default=BIN_DIR,
                show_default=True,
                help="Where the runtime finds CNI plugins (Debian: /usr/lib/cni).",
            ),
        ]
    ):
        function = option(function)
    return function


def _could_not(error: OSError) -> None:
    """A file the command could not write or read: one line, exit 1."""
    fail(
        f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}"
        f"{' (run as root)' if isinstance(error, PermissionError) else ''}",
        EXIT_FAILED,
    )


@click.group("cni", cls=Group)
def cni():
    """Chain accel-cni into the node's CNI configuration, take it out, write its kubeconfig."""


def _default_config() -> dict:
    return {"type": "accel-cni", "stateDir": os.environ.get(ENV_STATE) or DEFAULT_STATE}


def _plugin_object(given: str | None) -> tuple[dict, str]:
    """The object from --config (a file, or the JSON itself), and how to name it in an error."""
    from .. import inputs

    if given is None:
        return _default_config(), f"the default configuration (stateDir from ${ENV_STATE})"
    if given.lstrip().startswith(("{", "[")):
        try:
            document = json.loads(given)
        except (json.JSONDecodeError, RecursionError) as error:
            fail(f"--config: not valid JSON: {getattr(error, 'msg', 'nested too deeply')}")
        return document, "--config"
    return inputs.load_json(given, "--config"), "--config"


INSTALL_EPILOG = DIRECTORIES + (
    "\b\nWhat it changes: it puts the executable accel-cni into --bin-dir (a copy of this accel's\n"
    "  accel-cni; with --enter-pid-file, a sh shim that runs accel-cni in the mount namespace of\n"
    "  the process whose PID is in that file: accel's container in a DaemonSet with hostPID), then\n"
    "  appends accel-cni's object to the \"plugins\" of the node's network: the first valid file\n"
    "  in --conf-dir, in lexical order, ending .conf, .conflist or .json, as the runtime picks it.\n"
    "  A single .conf becomes a .conflist of the same name (uninstall turns it back). Every other\n"
    "  key stays as it was; files are replaced atomically.\n"
    "\b\nRun again, it changes nothing and says so; with another --config, it replaces accel-cni's\n"
    "  object where it is. With --watch it keeps running (until SIGTERM or Ctrl-C) and does this\n"
    "  every --interval: a network plugin that rewrites its file on upgrade drops accel-cni, and new\n"
    "  pods would start uncaptured; on a new node it waits for the network configuration to appear.\n"
    '\b\n--config is accel-cni\'s object, in a file or as the JSON itself: {"type": "accel-cni"} and\n'
    "  any of stateDir, capture (Istio's config JSON), podInfo, excludeNamespaces, logFile. Default:\n"
    '  {"type": "accel-cni", "stateDir": $ACCEL_STATE_DIR or /var/lib/accel}.\n'
    "\b\nExit status: 0 installed (or nothing to change); 1 it could not (no network configuration\n"
    "  in --conf-dir yet, a foreign accel-cni in --bin-dir, a file it cannot write), and nothing\n"
    "  was left half-done; 2 bad input (a bad --config, naming the key; a missing directory).\n"
    "\b\nExamples:\n"
    "  accel cni install\n"
    "  accel cni install --conf-dir /etc/cni/net.d --bin-dir /usr/lib/cni --config accel-cni.json\n"
    '  accel cni install --config \'{"type": "accel-cni", "excludeNamespaces": ["kube-system"]}\'\n'
    "  accel cni install --enter-pid-file /run/accel/agent.pid --watch   # in accel's DaemonSet\n"
)


@cni.command("install", epilog=INSTALL_EPILOG)
@directory_options
@click.option("--config", "config_file", metavar="FILE|JSON", help="accel-cni's object in the conflist.")
@click.option(
    "--enter-pid-file",
    metavar="FILE",
    help="Install a shim that runs accel-cni in the mount namespace of the PID in FILE.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Keep it so until stopped: put accel-cni back whenever the network plugin rewrites its file, "
    "and wait for a network configuration that is not there yet.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="With --watch: how often to look.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON (a line per change with --watch).")
def install_command(conf_dir, bin_dir, config_file, enter_pid_file, watch, interval, as_json):
    """Chain accel-cni after the node's network plugins, and put its executable where the runtime
    finds it."""
    from ..cni import config, conflist, install

    if enter_pid_file is not None and not enter_pid_file.startswith("/"):
        fail(
            f"--enter-pid-file: expected an absolute path (got {enter_pid_file!r}): the runtime runs the shim "
            "from a directory of its own"
        )
    plugin, label = _plugin_object(config_file)
    try:
        config.parse(plugin)
    except config.ConfigError as error:
        fail(f"{label}: {error}")
    stop = until_signalled() if watch else None
    waiting = None
    while True:
        try:
            done = install.install(conf_dir, bin_dir, plugin, enter_pid_file)
        except config.ConfigError as error:
            fail(f"{label}: {error}")
        except conflist.ConflistError as error:
            if not watch:
                fail(str(error), EXIT_FAILED)
            if str(error) != waiting:  # once per reason, not every interval
                warn([f"waiting: {error}"])
                waiting = str(error)
        except install.InstallError as error:
            fail(str(error), EXIT_FAILED)
        except OSError as error:
            _could_not(error)
        else:
            waiting = None
            if not watch or done.changed:
                _report_install(done, label, conf_dir, enter_pid_file, as_json, quiet_unchanged=watch)
        if not watch or stop.wait(interval):
            return


def _report_install(done, label, conf_dir, enter_pid_file, as_json, quiet_unchanged=False) -> None:
    warn([f"{label}: {note}" for note in done.warnings])
    warn([f"skipped {conf_dir}/{note} (a runtime skips it too)" for note in done.conflist.skipped])
    if as_json:
        click.echo(json.dumps(done.as_json()) if quiet_unchanged else json.dumps(done.as_json(), indent=2))
        return
    if not done.changed:
        click.echo(
            f"nothing to change: accel-cni is in {done.conflist.path}{_after(done.conflist)}, and "
            f"{done.executable.path} is {_kind(done.executable.kind)}"
        )
        return
    executable = done.executable
    if executable.action == "copied":
        click.echo(f"copied accel-cni to {executable.path}")
    elif executable.action == "written":
        click.echo(
            f"wrote a shim to {executable.path} (runs accel-cni in the mount namespace of the PID in {enter_pid_file})"
        )
    elif executable.action == "updated":
        click.echo(f"updated {executable.path} (now {_kind(executable.kind)})")
    change = done.conflist
    if change.action == "added" and change.converted is not None:
        click.echo(
            f"made {change.path} from {change.converted.name} (removed; uninstall puts it back) and added "
            f"accel-cni{_after(change)}"
        )
    elif change.action == "added":
        click.echo(f"added accel-cni to {change.path}{_after(change)}")
    elif change.action == "updated":
        click.echo(f"updated accel-cni in {change.path}{_after(change)}")


def _after(change) -> str:
    return f" (after {', '.join(change.after)})" if change.after else ""


def _kind(kind: str | None) -> str:
    return {"copy": "a copy of this accel's accel-cni", "shim": "accel's shim"}.get(kind or "", "not accel's")


UNINSTALL_EPILOG = DIRECTORIES + (
    "\b\nWhat it changes: it takes every accel-cni object out of every configuration file in\n"
    "  --conf-dir (a .conf that install made into a .conflist comes back), then removes\n"
    "  --bin-dir/accel-cni if it is accel's (a copy of accel-cni or accel's shim, known by its\n"
    "  content); a file of that name that is not accel's is left, with a warning.\n"
    "\b\nRun again, or where nothing was installed, it changes nothing and says so.\n"
    "\b\nExit status: 0 removed (or nothing to remove); 1 a file it cannot write; 2 bad input.\n"
    "\b\nExample:\n"
    "  accel cni uninstall --conf-dir /etc/cni/net.d --bin-dir /opt/cni/bin\n"
)


@cni.command("uninstall", epilog=UNINSTALL_EPILOG)
@directory_options
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def uninstall_command(conf_dir, bin_dir, as_json):
    """Take accel-cni out of the node's CNI configuration and its executable out of the plugin
    directory."""
    from ..cni import conflist, install

    try:
        done = install.uninstall(conf_dir, bin_dir)
    except (conflist.ConflistError, install.InstallError) as error:
        fail(str(error), EXIT_FAILED)
    except OSError as error:
        _could_not(error)
    if done.executable.action == "left":
        warn([f"left {done.executable.path}: {done.executable.reason}"])
    if as_json:
        print_json(done.as_json())
        return
    if not done.changed:
        click.echo(
            "nothing to remove: accel-cni is in no file of "
            f"{conf_dir}{'' if done.executable.action == 'left' else f', and {done.executable.path} is absent'}"
        )
        return
    for change in done.conflists:
        if change.action == "removed":
            click.echo(f"removed accel-cni from {change.path}")
        elif change.action == "restored":
            click.echo(f"removed accel-cni: put {change.converted} back as it was, removed {change.path}")
        elif change.converted is not None:
            click.echo(f"removed {change.path}, which accel made from {change.converted.name} (written again since)")
        else:
            click.echo(f"removed {change.path} (it held accel-cni alone)")
    if done.executable.action == "removed":
        click.echo(f"removed {done.executable.path}")


KUBECONFIG_EPILOG = (
    "\b\nWhat it writes: a kubeconfig (JSON, which is YAML) with the API server at\n"
    "  https://HOST:PORT, the cluster's CA file and the service account's token file, both by\n"
    "  path: a projected token rotates, and accel-cni reads the file each time it runs. Mode 0600,\n"
    "  replaced atomically; the same content is not written again. Name it in accel-cni's object:\n"
    '  "podInfo": {"source": "kubernetes", "kubeconfig": FILE}.\n'
    "\b\nDefaults, inside a pod: $KUBERNETES_SERVICE_HOST, $KUBERNETES_SERVICE_PORT,\n"
    "  /var/run/secrets/kubernetes.io/serviceaccount/ca.crt and .../token.\n"
    "\b\nExit status: 0 written (or unchanged); 1 it cannot write FILE; 2 bad input (an input\n"
    "  missing outside a pod, a file that is not there).\n"
    "\b\nExamples:\n"
    "  accel cni kubeconfig --out /etc/cni/net.d/accel-cni.kubeconfig     # in a pod\n"
    "  accel cni kubeconfig --out kc.json --server-host 10.96.0.1 --server-port 443 \\\n"
    "      --ca-file /etc/kubernetes/pki/ca.crt --token-file /var/lib/accel/token\n"
)


@cni.command("kubeconfig", epilog=KUBECONFIG_EPILOG)
@click.option("--out", required=True, type=OutputFile(), metavar="FILE", help="The kubeconfig to write.")
@click.option("--server-host", metavar="HOST", help="The API server's host [default: $KUBERNETES_SERVICE_HOST].")
@click.option("--server-port", metavar="PORT", help="Its port [default: $KUBERNETES_SERVICE_PORT].")
@click.option("--ca-file", metavar="FILE", help="The cluster's CA certificate [default: the service account's].")
@click.option("--token-file", metavar="FILE", help="The token file [default: the service account's].")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome and the kubeconfig as JSON.")
def kubeconfig_command(out, server_host, server_port, ca_file, token_file, as_json):
    """Write the kubeconfig accel-cni reads pods with, from the pod it runs in."""
    from ..cni import install

    options = {"host": "--server-host", "port": "--server-port", "ca_file": "--ca-file", "token_file": "--token-file"}
    try:
        action, document = install.write_kubeconfig(out, server_host, server_port, ca_file, token_file)
    except install.KubeconfigError as error:
        fail(f"{options[error.field]}: {error}")
    except OSError as error:
        _could_not(error)
    if as_json:
        print_json({"action": action, "path": out, "kubeconfig": document})
    else:
        click.echo(
            f"{'wrote' if action == 'written' else 'nothing to change:'} {out} "
            f"(server {document['clusters'][0]['cluster']['server']})"
        )


COMMANDS = (cni,)
