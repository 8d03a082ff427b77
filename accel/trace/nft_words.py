"""The words of an `nft -f` text as the tracer reads them: tokens, and the names, interfaces,
protocols, ids, ports, marks and addresses in them, each refused with a TraceError naming the
line when nft would read it otherwise (or accel's tracer does not understand it)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .model import TraceError

# The words of the grammar above: never a bare name (nft would read them as the grammar).
KEYWORDS = frozenset(
    """accept drop return jump goto counter redirect tproxy to meta l4proto ip ip6 saddr daddr tcp
    udp dport sport skuid skgid mark ct state zone set iifname oifname index type hook priority flags interval
    auto-merge table chain rule element inet add insert flush""".split()
)
BARE_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9/_.-]*")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[0-9]+")
_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([{},;])|([^\s{},;"]+))')


@dataclass(frozen=True)
class Token:
    text: str
    quoted: bool = False


def split_tokens(text: str, where: str) -> list[Token]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match:
            raise TraceError(where, f"cannot read {text[position:]!r}")
        position = match.end()
        quoted, punctuation, word = match.groups()
        tokens.append(Token(quoted, True) if quoted is not None else Token(punctuation or word))
    return tokens


@dataclass(frozen=True)
class Interface:
    """An interface name as nft matches it: a quoted name ending in * is a prefix."""

    name: str
    prefix: bool = False

    def matches(self, actual: str | None) -> bool:
        if actual is None:  # an interface no rule names
            return False
        return actual.startswith(self.name) if self.prefix else actual == self.name


def member_matches(actual, member) -> bool:
    if isinstance(member, Interface):
        return member.matches(actual)
    if isinstance(member, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return actual in member
    return actual == member


def read_name(token: Token, where: str) -> str:
    """A name as nft reads it: quoted, or bare when nft's scanner sees a plain string there (a
    keyword or a number in that place would be read as grammar)."""
    if token.quoted:
        if "\\" in token.text:
            raise TraceError(where, f"escapes in {token.text!r} are not understood")
        return token.text
    if not BARE_NAME.fullmatch(token.text) or token.text in KEYWORDS:
        raise TraceError(where, f"{token.text!r} is not a name nft reads bare (it must be quoted)")
    return token.text


def read_interface(token: Token, where: str) -> Interface:
    name = read_name(token, where)
    if token.quoted and name.endswith("*"):  # nft's wildcard
        return Interface(name[:-1], prefix=True)
    return Interface(name)


def read_proto(token: Token, where: str) -> str:
    if token.quoted or token.text not in ("tcp", "udp"):
        raise TraceError(where, f"l4proto {token.text!r} is not understood")
    return token.text


def read_uid(token: Token, where: str) -> int:
    if token.quoted or not token.text.isdigit():
        raise TraceError(where, f"skuid {token.text!r}: only numeric uids are understood")
    return int(token.text)


def read_port(text: str, where: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise TraceError(where, f"{text!r} is not a port (ranges are not understood)")
    return int(text)


def read_colon_port(text: str, where: str) -> int:
    if not text.startswith(":"):
        raise TraceError(where, f"only to :PORT is understood, not {text!r}")
    return read_port(text[1:], where)


def read_mark(text: str, where: str) -> int:
    if not _NUMBER.fullmatch(text) or int(text, 0) > 0xFFFFFFFF:
        raise TraceError(where, f"{text!r} is not a 32-bit mark")
    return int(text, 0)


def read_network(text: str, version: int, where: str):
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise TraceError(where, f"{text!r} is not an address or prefix") from None
    if network.version != version:
        raise TraceError(where, f"{text} is not an IPv{version} address")
    return network


def braced(tokens: list[Token], where: str) -> tuple[list[Token], list[Token]]:
    """{ a, b, ... } at the start of tokens: the elements and what follows."""
    if not tokens or tokens[0].text != "{" or tokens[0].quoted:
        raise TraceError(where, "expected { ... }")
    try:
        end = next(i for i, t in enumerate(tokens) if t.text == "}" and not t.quoted)
    except StopIteration:
        raise TraceError(where, "{ without }") from None
    inner = tokens[1:end]
    values = inner[::2]
    if not values or any(t.text != "," for t in inner[1::2]) or any(t.text in "{},;" for t in values):
        raise TraceError(where, "elements must be a comma list")
    return values, tokens[end + 1 :]
