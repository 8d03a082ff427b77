"""accel render on arbitrary input: exit 0 or 2, never a traceback; a refusal is one line on stderr
and nothing on stdout; a success warns on stderr only in `accel: warning:` lines."""

import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accel import inputs
from accel.backends import BACKEND_NAMES
from accel.cli import main

ISTIO_FLAGS = sorted({flag for field in inputs.FIELDS for flag in field.flags})
ENV_NAMES = sorted({name for field in inputs.FIELDS for name in field.env})
GO_FIELDS = sorted({field.go for field in inputs.FIELDS})
FILE_OPTIONS = ("--istio-config", "--annotations", "--resolv-conf")
ANNOTATION_KEYS = [
    "sidecar.istio.io/status",
    "sidecar.istio.io/interceptionMode",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/excludeInterfaces",
    "status.sidecar.istio.io/port",
]

# Values that reach past the first check as well as arbitrary text.
values = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        [
            "*",
            "",
            "15001",
            "0",
            "65536",
            "-1",
            "1337",
            "10.0.0.0/8",
            "::1/128",
            "10.0.0.1",
            "REDIRECT",
            "TPROXY",
            "true",
            "false",
            "eth0",
            "80,443",
            "1,,2",
            "java",
            "¹",
            "٣",
        ]
    ),
)  # Unicode digits: isdigit() but not ASCII
istio_argv = st.lists(
    st.one_of(
        st.sampled_from([*ISTIO_FLAGS, "--", "-", "--json", "--backend", "--backends", "--log_output_level"]),
        st.builds(lambda flag, value: f"{flag}={value}", st.sampled_from(ISTIO_FLAGS), values),
        values,
    ),
    max_size=8,
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), values),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(GO_FIELDS), st.text(max_size=8)), children, max_size=4),
    ),
    max_leaves=12,
)
annotations = st.fixed_dictionaries(
    {},
    optional={
        "annotations": st.dictionaries(st.sampled_from(ANNOTATION_KEYS), values, max_size=4),
        "proxy_env": st.dictionaries(st.sampled_from(["ISTIO_META_DNS_CAPTURE", "ISTIO_DUAL_STACK"]), values),
        "proxy_runAsUser": json_values,
        "proxy_runAsGroup": json_values,
        "pod_ips": json_values,
    },
)
file_bytes = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    annotations.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 100_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.lists(st.sampled_from(["nameserver", "10.0.0.53", "::1", "search", "x", "\n"]), max_size=8).map(
        lambda words: " ".join(words).encode()
    ),
)
options = st.fixed_dictionaries(
    {},
    optional={
        "--backend": st.one_of(st.sampled_from(BACKEND_NAMES), st.text(max_size=12)),
        "--family": st.one_of(st.sampled_from(["4", "6"]), st.text(max_size=3)),
        "--dns-servers": values,
        **{option: st.text(max_size=24) for option in FILE_OPTIONS},  # as paths: mostly files that do not exist
    },
)
flags = st.lists(st.sampled_from(["--json", "--ipv6", "--no-ipv6", "--nft-sets"]), unique=True)
backends = st.lists(st.sampled_from(["--backend=iptables", "--backend=nftables-sets", "--backend=ebpf"]), max_size=1)
environment = st.dictionaries(st.sampled_from(ENV_NAMES), values.filter(lambda v: "\0" not in v), max_size=3)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return tmp_path_factory.mktemp("inputs")


def check(argv: list[str], env: dict | None = None) -> None:
    result = CliRunner().invoke(main, argv, env=env)
    assert result.exit_code in (0, 2), (argv, env, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, env, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.stdout == "", argv
        assert result.stderr.startswith("accel: error: ") and result.stderr.count("\n") == 1, (argv, result.stderr)
        return
    assert all(line.startswith("accel: warning: ") for line in result.stderr.splitlines()), result.stderr
    if "--json" in argv:
        assert set(json.loads(result.stdout)) == {"backend", "spec", "warnings", "text", "families", "datapath"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=options, flags=flags, istio=istio_argv, env=environment)
def test_render_with_any_options_and_istio_arguments(options, flags, istio, env):
    argv = ["render", *flags, *[word for option, value in options.items() for word in (option, value)]]
    check(argv + (["--", *istio] if istio else []), env)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from(FILE_OPTIONS), content=file_bytes, flags=flags, backend=backends)
def test_render_with_any_file(directory, option, content, flags, backend):
    path = directory / option.strip("-")
    path.write_bytes(content)
    # resolv.conf is read only when DNS capture needs its nameservers
    istio = ["--", "--redirect-dns"] if option == "--resolv-conf" else []
    check(["render", *flags, *backend, option, str(path), *istio])
