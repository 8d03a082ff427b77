"""istio-iptables' command line and environment, read as istio-iptables reads them: pflag syntax, env
binding with aliases (argv > alias env > env > default), env-only owner-group and loopback settings."""

from __future__ import annotations

from collections.abc import Mapping

from .. import constants as c
from ..spec import CaptureSpec, SpecError
from .fields import (
    BY_FLAG,
    FIELDS,
    Given,
    Parsed,
    build_spec,
    default_proxy_uid,
    dns_given,
    flag_label,
    given_from_texts,
)
from .files import read_nameservers

# Istio's logging flags, accepted on every istio-iptables command line (the stock istio-init
# passes --log_output_level). None of them takes part in capture. Value: whether it is boolean.
LOG_FLAGS = {
    "--log_as_json": True,
    "--log_caller": False,
    "--log_output_level": False,
    "--log_rotate": False,
    "--log_rotate_max_age": False,
    "--log_rotate_max_backups": False,
    "--log_rotate_max_size": False,
    "--log_stacktrace_level": False,
    "--log_target": False,
}

# How errors and warnings name each CaptureSpec attribute: by the flag (or env variable).
LABELS = {f.attr: flag_label(f) for f in FIELDS if f.attr is not None}


def parse_istio_argv(argv: list[str]) -> dict[str, str]:
    """pflag-style parsing of istio-iptables arguments into {Go field: text}."""
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise SpecError("istio-iptables arguments", argv[i], "unexpected argument")
            break
        if not arg.startswith("-") or arg == "-":
            raise SpecError("istio-iptables arguments", arg, "unexpected argument (flags start with -)")
        name, equals, value = arg.partition("=")
        has_value = bool(equals)
        if not arg.startswith("--") and len(name) > 2:  # -p15001
            name, has_value, value = arg[:2], True, arg[2:].lstrip("=")
        if name in LOG_FLAGS:
            if not has_value and not LOG_FLAGS[name]:
                i += 1
            continue
        field = BY_FLAG.get(name)
        if field is None:
            raise SpecError(name, arg, "unknown istio-iptables flag (see accel render --help)")
        if field.boolean:
            values[field.go] = value if has_value else "true"
            continue
        if not has_value:
            if i >= len(argv):
                raise SpecError(flag_label(field), arg, "flag needs a value")
            value = argv[i]
            i += 1
        values[field.go] = value
    return values


def read_istio_args(
    argv: list[str],
    env: Mapping[str, str] | None = None,
    *,
    enable_ipv6: bool = False,
    dns_servers: list[str] | None = None,
    resolv_conf: str = "/etc/resolv.conf",
) -> Parsed:
    """The spec `istio-iptables ARGV` with environment ENV would capture, and warnings about the input.

    What istio-iptables detects on the node is given instead: enable_ipv6 (the pod's first
    address is IPv6) and the DNS servers (else read from resolv_conf when DNS capture needs them).
    """
    env = {} if env is None else env
    argv_values = parse_istio_argv(argv)
    texts: dict[str, tuple[str, str]] = {}  # Go field -> (text, label)
    for field in FIELDS:
        for name in field.env:
            # An empty boolean variable keeps the default: istio-iptables ignores a variable it cannot
            # parse as its flag's type (accel refuses the others).
            if name in env and not (field.boolean and not env[name].strip()):
                texts[field.go] = (env[name], name)
        if field.go in argv_values:
            texts[field.go] = (argv_values[field.go], flag_label(field))
    given = given_from_texts(texts, LABELS, default_proxy_uid(env.get("ENVOY_USER", c.PROXY_USER)))
    given["enable_ipv6"] = Given(enable_ipv6, "enable_ipv6")
    given.update(_dns_servers(given, dns_servers, resolv_conf))
    return build_spec(given, LABELS)


def from_istio_args(
    argv: list[str],
    env: Mapping[str, str] | None = None,
    *,
    enable_ipv6: bool = False,
    dns_servers: list[str] | None = None,
    resolv_conf: str = "/etc/resolv.conf",
) -> CaptureSpec:
    """A CaptureSpec exactly as `istio-iptables ARGV` with environment ENV would capture (read_istio_args)."""
    return read_istio_args(argv, env, enable_ipv6=enable_ipv6, dns_servers=dns_servers, resolv_conf=resolv_conf).spec


def _dns_servers(given: Mapping[str, Given], servers: list[str] | None, resolv_conf: str) -> dict[str, Given]:
    """DNS servers: given explicitly, or, as istio-iptables does, the nameservers of resolv.conf,
    read only when --redirect-dns is on and --capture-all-dns is off."""
    if servers is not None:
        return dns_given(servers, "--dns-servers")
    flags = {attr: g.value for attr, g in given.items()}
    if flags.get("redirect_dns") and not flags.get("capture_all_dns"):
        return dns_given(read_nameservers(resolv_conf), f"nameserver in {resolv_conf}")
    return {}
