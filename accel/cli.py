"""The `accel` command line."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import click

from . import inputs
from .inputs import FIELDS
from .render import RENDERERS, render_iptables, render_nftables
from .spec import SpecError, parse_dns_server, split_list

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT):
    click.echo(f"accel: error: {message}", err=True)
    sys.exit(code)


class AccelGroup(click.Group):
    """Turns bad input anywhere below into one line on stderr and exit 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpecError as error:
            fail(str(error))


@click.group(cls=AccelGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """accel: Istio sidecar traffic capture with iptables, nftables or eBPF, proven equivalent.

    Start with `accel render --help`.
    """


def _wrap(text: str, indent: int) -> str:
    pad = " " * indent
    return textwrap.fill(text, 78, initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False)


def _flag_help() -> str:
    rows = []
    for field in FIELDS:
        if field.attr is None:
            continue
        names = ", ".join(reversed(field.flags)) if field.flags else f"${field.env[0]} (environment only)"
        text = f"{field.help}; default {field.default}."
        if field.flags and field.env:
            text += f" Env: {', '.join(field.env)}."
        rows.append(f"  {names}\n{_wrap(text, 6)}")
    ignored = " ".join(f.flags[0] for f in FIELDS if f.attr is None) + " --log_*"
    return (
        "\b\nistio-iptables flags (after --), read exactly as istio-iptables reads them:\n"
        + "\n".join(rows)
        + "\n\n\b\nAccepted and ignored (they do not change what is captured):\n"
        + _wrap(ignored, 2) + "\n"
    )


RENDER_EPILOG = (
    "\b\nInput, one of:\n"
    "  -- ISTIO_IPTABLES_ARGS   istio-iptables arguments; the environment is read as\n"
    "                           istio-iptables reads it (argv wins over env)\n"
    "  --istio-config FILE      Istio's config as JSON, Go field names\n"
    "                           (e.g. {\"ProxyPort\": \"15001\", \"InboundPortsInclude\": \"*\"});\n"
    "                           absent fields take istio-iptables' defaults\n"
    "  --annotations FILE       pod annotations as istio-cni reads them: JSON with keys\n"
    "                           annotations, proxy_env, proxy_runAsUser, proxy_runAsGroup\n"
    "                           and optionally pod_ips\n\n"
    + _flag_help()
    + "\n\b\nExamples:\n"
    "  # the stock istio-init sidecar capture\n"
    "  accel render --backend iptables -- -p 15001 -z 15006 -u 1337 -m REDIRECT \\\n"
    "      -i '*' -x \"\" -b '*' -d 15090,15021,15020\n"
    "  # the same as an nftables transaction, with the spec, as JSON\n"
    "  accel render --backend nftables --json -- -i '*' -b '*'\n"
    "  # what istio-cni would program for an annotated pod\n"
    "  accel render --annotations pod.json\n"
)


@main.command(epilog=RENDER_EPILOG, context_settings={"ignore_unknown_options": True})
@click.option("--backend", type=click.Choice(RENDERERS), default="iptables", show_default=True,
              help="iptables: Istio's exact iptables-restore input (IPv4 block, then IPv6). "
                   "nftables: Istio's native nftables transaction (nft -f).")
@click.option("--istio-config", "istio_config", metavar="FILE", help="Istio config JSON (Go field names).")
@click.option("--annotations", metavar="FILE", help="Pod annotations JSON, read as istio-cni does.")
@click.option("--ipv6/--no-ipv6", default=None,
              help="Whether the pod has IPv6 (istio-iptables detects it from the pod's first "
                   "address). Default: no, or what the config/annotations file says.")
@click.option("--dns-servers", metavar="LIST",
              help="Comma list of the pod's nameservers for --redirect-dns (default: read "
                   "--resolv-conf, as istio-iptables does, only when DNS capture needs them).")
@click.option("--resolv-conf", default="/etc/resolv.conf", show_default=True, metavar="PATH",
              help="resolv.conf to read nameservers from.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: backend, spec, warnings and the rules.")
@click.argument("istio_args", nargs=-1, type=click.UNPROCESSED)
def render(backend, istio_config, annotations, ipv6, dns_servers, resolv_conf, as_json, istio_args):
    """Print the capture rules for a pod: what the backend would apply, without applying it.

    The iptables rendering is byte-for-byte what istio-iptables feeds iptables-restore; the
    nftables rendering is what istio-iptables --native-nftables applies.
    """
    spec, warnings = spec_from_inputs(list(istio_args), istio_config, annotations, ipv6,
                                      dns_servers, resolv_conf)
    for note in warnings:
        click.echo(f"accel: warning: {note}", err=True)
    if backend == "iptables":
        rules = render_iptables(spec)
        text, families = rules.text, {"ipv4": rules.ipv4, "ipv6": rules.ipv6}
    else:
        text, families = render_nftables(spec), {}
    if as_json:
        document = {"backend": backend, "spec": inputs.to_istio_config(spec), "warnings": warnings,
                    "text": text, **families}
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(text, nl=False)


def spec_from_inputs(istio_args, istio_config, annotations, ipv6, dns_servers, resolv_conf):
    """One CaptureSpec from whichever input was given, plus warnings about ignored options."""
    given = [name for name, value in (("istio-iptables arguments", istio_args),
                                      ("--istio-config", istio_config),
                                      ("--annotations", annotations)) if value]
    if len(given) > 1:
        raise SpecError("input", ", ".join(given), "give only one of them")
    warnings: list[str] = []
    servers = None
    if dns_servers is not None:
        servers = [parse_dns_server(text, "--dns-servers") for text in split_list(dns_servers)]
    if istio_config or annotations:
        if istio_config:
            spec = inputs.from_istio_config(inputs.load_json(istio_config, "--istio-config"))
        else:
            pod = inputs.from_annotations(inputs.load_json(annotations, "--annotations"))
            spec, warnings = pod.spec, list(pod.warnings)
        if servers is not None:
            spec = spec.replace(**inputs.split_dns_servers(servers))
    else:
        spec = inputs.from_istio_args(istio_args, os.environ, dns_servers=servers, resolv_conf=resolv_conf)
    if ipv6 is not None:
        spec = spec.replace(enable_ipv6=ipv6)
    return spec, warnings + spec.warnings()


@main.command()
def demo():
    """Render the stock istio-init capture, load it into scratch namespaces, show the kernel's view.

    Needs root. Everything it creates lives in namespaces it removes again.
    """
    from .demo import run_demo

    if os.geteuid() != 0:
        fail("accel demo needs root (it creates network namespaces)", 1)
    run_demo()
