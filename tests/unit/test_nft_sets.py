"""The nftables rendering with sets (--nft-sets): lists become sets, the rule count stays put.
(That it captures exactly what iptables captures is for accel compare: test_compare.py.)"""

import re

from hypothesis import given

from accel import inputs
from accel.render import render_nftables
from tests.strategies import capture_specs


def spec(*args):
    return inputs.from_istio_args(list(args), {})


def rules(text):
    return [line for line in text.splitlines() if line.startswith(("add rule", "insert rule"))]


def test_the_rule_count_does_not_grow_with_the_lists():
    def sized(n):
        cidrs = ",".join(f"10.{i // 250}.{i % 250}.0/24" for i in range(n))
        ports = ",".join(str(9000 + i) for i in range(min(n, 500)))
        return spec(
            "-x", cidrs, "-i", cidrs.replace("10.", "11."), "-o", ports, "-q", ports.replace("9", "8", 1), "-b", ports
        )

    small, large = render_nftables(sized(2), sets=True), render_nftables(sized(2000), sets=True)
    assert len(rules(small)) == len(rules(large))
    assert len(rules(render_nftables(sized(2000)))) > 4000  # Istio's: a rule per element


def test_each_list_is_one_set_holding_its_elements():
    text = render_nftables(spec("-x", "10.96.0.0/12,10.96.1.0/24", "-o", "9000,9001", "-b", "8080,8443"), sets=True)
    assert "add set inet istio-proxy-nat outbound-exclude-v4 { type ipv4_addr ; flags interval ; auto-merge ; }" in text
    assert "add element inet istio-proxy-nat outbound-exclude-v4 { 10.96.0.0/12, 10.96.1.0/24 }" in text
    assert "add element inet istio-proxy-nat outbound-ports-exclude { 9000, 9001 }" in text
    assert "add element inet istio-proxy-nat inbound-ports-include { 8080, 8443 }" in text
    assert "istio-output ip daddr @outbound-exclude-v4 counter return" in text
    assert "istio-output tcp dport @outbound-ports-exclude counter return" in text
    assert "istio-output udp dport @outbound-ports-exclude counter return" in text
    # a set is flushed before it is filled, so reapplying never keeps stale elements
    assert text.index("flush set inet istio-proxy-nat outbound-exclude-v4") < text.index(
        "add element inet istio-proxy-nat outbound-exclude-v4"
    )


def test_without_lists_it_is_istios_rendering():
    plain = spec("-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", "*")
    assert render_nftables(plain, sets=True) == render_nftables(plain)


@given(capture_specs)
def test_every_set_is_declared_before_use_and_used(any_spec):
    text = render_nftables(any_spec, sets=True)
    declared = re.findall(r"^add set inet (\S+) (\S+) ", text, re.MULTILINE)
    used = set(re.findall(r"^(?:add|insert) rule inet (\S+) .*? @([\w-]+)", text, re.MULTILINE))
    assert set(declared) == used
    for table, name in declared:
        assert text.index(f"add set inet {table} {name} ") < text.index(f"@{name}")
