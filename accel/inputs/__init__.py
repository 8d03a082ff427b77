"""The three ways a CaptureSpec comes in, each read exactly as Istio reads it.

1. istio-iptables argv and environment (istio_args: `from_istio_args`).
2. Istio's config JSON with Go field names (istio_config: `from_istio_config`, `to_istio_config`).
3. Pod annotations as the istio-cni plugin reads them in sidecar mode (annotations: `from_annotations`).

One table, fields.FIELDS, describes every option; the --help text is generated from it. Each input
turns text into values (with parsers, shared by all three) and hands them to CaptureSpec, which
checks every rule once; the input then names an error's field as its user wrote it. files reads
the JSON documents and resolv.conf.
"""

from __future__ import annotations

import os

from .. import constants as c
from ..spec import CaptureSpec, SpecError
from .annotations import ANNOTATIONS, from_annotations
from .fields import FIELDS, Field, Parsed, build_spec, dns_given, empty_item_notes, split_dns_servers
from .files import load_json, read_nameservers
from .istio_args import from_istio_args, parse_istio_argv, read_istio_args
from .istio_config import from_istio_config, read_istio_config, to_istio_config
from .parsers import split_list

# The stock sidecar: istio-init's arguments as Istio's injector writes them (no DNS capture).
ISTIO_INIT_DEFAULT_ARGS = c.ISTIO_INIT_DEFAULT_ARGS

__all__ = [
    "ANNOTATIONS",
    "FIELDS",
    "ISTIO_INIT_DEFAULT_ARGS",
    "Field",
    "Parsed",
    "from_annotations",
    "from_istio_args",
    "from_istio_config",
    "load_json",
    "parse_istio_argv",
    "read_istio_args",
    "read_istio_config",
    "read_nameservers",
    "spec_from_inputs",
    "split_dns_servers",
    "to_istio_config",
]


def spec_from_inputs(
    istio_args, istio_config, annotations, ipv6, dns_servers, resolv_conf
) -> tuple[CaptureSpec, list[str]]:
    """One CaptureSpec from whichever input was given, plus warnings about the input and ignored options."""
    given = [
        name
        for name, value in (
            ("istio-iptables arguments", istio_args),
            ("--istio-config", istio_config),
            ("--annotations", annotations),
        )
        if value
    ]
    if len(given) > 1:
        raise SpecError("input", ", ".join(given), "give only one of them")
    servers = None if dns_servers is None else split_list(dns_servers)
    notes = [] if dns_servers is None else empty_item_notes("--dns-servers", dns_servers)
    if istio_config or annotations:
        parsed = (
            read_istio_config(load_json(istio_config, "--istio-config"))
            if istio_config
            else from_annotations(load_json(annotations, "--annotations"))
        )
        if servers is not None:
            override = build_spec(dns_given(servers, "--dns-servers"), {}, base=parsed.spec)
            parsed = Parsed(override.spec, parsed.warnings + override.warnings)
    else:
        parsed = read_istio_args(istio_args, os.environ, dns_servers=servers, resolv_conf=resolv_conf)
    spec = parsed.spec if ipv6 is None else parsed.spec.replace(enable_ipv6=ipv6)
    return spec, notes + list(parsed.warnings) + spec.warnings()
