"""`accel render`: the rules or datapath entries a backend would apply for a pod, without applying them."""

from __future__ import annotations

import textwrap

import click

from .. import inputs
from ..backends import BACKEND_NAMES
from ..render import render_ebpf, render_ebpf_text, render_iptables, render_nftables
from ..spec import SpecError
from .common import print_json, refuse_unsupported, spec_options, warn


def _wrap(text: str, indent: int) -> str:
    pad = " " * indent
    return textwrap.fill(text, 78, initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False)


def _flag_help() -> str:
    rows = []
    for field in inputs.FIELDS:
        if field.attr is None:
            continue
        names = ", ".join(reversed(field.flags)) if field.flags else f"${field.env[0]} (environment only)"
        text = f"{field.help}; default {field.default}."
        if field.flags and field.env:
            text += f" Env: {', '.join(field.env)}."
        rows.append(f"  {names}\n{_wrap(text, 6)}")
    ignored = " ".join(f.flags[0] for f in inputs.FIELDS if f.attr is None) + " --log_*"
    return (
        "\b\nistio-iptables flags (after --), read exactly as istio-iptables reads them:\n"
        + "\n".join(rows)
        + "\n\n\b\nAccepted and ignored (they do not change what is captured):\n"
        + _wrap(ignored, 2)
        + "\n"
    )


EPILOG = (
    "\b\nInput, one of:\n"
    "  -- ISTIO_IPTABLES_ARGS   istio-iptables arguments; the environment is read as\n"
    "                           istio-iptables reads it (argv wins over env). accel's\n"
    "                           own options go before the --\n"
    "  --istio-config FILE      Istio's config as JSON, Go field names\n"
    '                           (e.g. {"ProxyPort": "15001", "InboundPortsInclude": "*"});\n'
    "                           absent fields take istio-iptables' defaults\n"
    "  --annotations FILE       pod annotations as istio-cni reads them: JSON with keys\n"
    "                           annotations, proxy_env, proxy_runAsUser, proxy_runAsGroup\n"
    "                           and optionally pod_ips\n\n"
    + _flag_help()
    + "\n\b\nOutput, by backend (the names accel compare takes; none renders nothing):\n"
    "  iptables, iptables-nft, iptables-legacy\n"
    "        Istio's iptables-restore input (the same text for each variant: the variant\n"
    "        only picks the binary). With IPv6, the IPv4 block and then the IPv6 block, as\n"
    "        Istio's goldens have them; no single tool takes both: --family 4 is for\n"
    "        iptables-restore, --family 6 for ip6tables-restore\n"
    "  nftables        Istio's native nftables transaction, both families, for nft -f\n"
    "  nftables-sets   the same with CIDR and port lists as named interval sets\n"
    "  ebpf            the programs the eBPF backend attaches and this pod's map entries\n"
    "\b\n--json prints one object, the same keys for every backend:\n"
    "  backend    the backend rendered\n"
    "  spec       the spec as Istio's config JSON (--istio-config reads it back)\n"
    "  warnings   options accepted without effect, as istio-iptables ignores them\n"
    "  text       what is printed without --json\n"
    '  families   {"ipv4": text, "ipv6": text or null} for iptables; null otherwise\n'
    '  datapath   {"programs": [...], "maps": {...}} for ebpf; null otherwise\n'
    "\b\nExit status: 0 rendered; 2 bad input (one line on stderr naming the field and value).\n"
    "\b\nExamples:\n"
    "  # the stock istio-init sidecar capture\n"
    "  accel render --backend iptables -- -p 15001 -z 15006 -u 1337 -m REDIRECT \\\n"
    "      -i '*' -x \"\" -b '*' -d 15090,15021,15020\n"
    "  # with IPv6, each family straight into its tool\n"
    "  accel render --ipv6 --family 4 -- -i '*' -b '*' | iptables-restore --test\n"
    "  accel render --ipv6 --family 6 -- -i '*' -b '*' | ip6tables-restore --test\n"
    "  # the same as an nftables transaction, with the spec, as JSON\n"
    "  accel render --backend nftables --json -- -i '*' -b '*'\n"
    "  # what the eBPF backend would load for the same pod\n"
    "  accel render --backend ebpf -- -i '*' -b '*'\n"
    "  # what istio-cni would program for an annotated pod\n"
    "  accel render --annotations pod.json\n"
)


@click.command("render", epilog=EPILOG, context_settings={"ignore_unknown_options": True})
@click.option(
    "--backend",
    type=click.Choice(BACKEND_NAMES),
    default="iptables",
    show_default=True,
    metavar="NAME",
    help="Which backend's rendering (Output below).",
)
@click.option("--nft-sets", is_flag=True, help="Same as --backend nftables-sets.")
@click.option(
    "--family",
    type=click.Choice(["4", "6"]),
    help="iptables backends: only the IPv4 rules (4, for iptables-restore) or only the IPv6 rules "
    "(6, for ip6tables-restore). Default: both, back to back.",
)
@spec_options()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (see below).")
def render(backend, nft_sets, family, as_json, spec, warnings):
    """Print the capture rules for a pod: what a backend would apply, without applying it.

    The iptables rendering is byte-for-byte what istio-iptables feeds iptables-restore; the
    nftables rendering is what istio-iptables --native-nftables applies; the ebpf rendering is
    the dry run of the eBPF backend: its programs and the map entries for this pod. No root needed.
    """
    if nft_sets:
        if backend not in ("nftables", "nftables-sets"):
            raise SpecError("--nft-sets", backend, "only applies to --backend nftables")
        backend = "nftables-sets"
    if backend == "none":
        raise SpecError(
            "--backend", backend, "it captures nothing, so there are no rules to render (it is accel compare's control)"
        )
    iptables = backend.startswith("iptables")
    if family and not iptables:
        raise SpecError(
            "--family",
            family,
            f"only the iptables backends write one block per family; {backend} takes both families at once",
        )
    if family == "6" and not spec.enable_ipv6:
        raise SpecError("--family", family, "the pod has no IPv6, so there are no IPv6 rules (add --ipv6)")
    refuse_unsupported(spec, [backend])
    warn(warnings)
    families = datapath = None
    if iptables:
        rules = render_iptables(spec)
        families = {"ipv4": rules.ipv4, "ipv6": rules.ipv6}
        text = {None: rules.text, "4": rules.ipv4, "6": rules.ipv6}[family]
    elif backend == "ebpf":
        datapath, text = render_ebpf(spec), render_ebpf_text(spec)
    else:
        text = render_nftables(spec, sets=backend == "nftables-sets")
    if as_json:
        print_json(
            {
                "backend": backend,
                "spec": inputs.to_istio_config(spec),
                "warnings": warnings,
                "text": text,
                "families": families,
                "datapath": datapath,
            }
        )
    else:
        click.echo(text, nl=False)
