"""The facts of a pod's network namespace that capture depends on, read and followed as they change.

istio-iptables' "-o lo" is decided by routing for every packet: an address or local route added to
a pod after its rules were loaded is local at once, and one removed is local no more. A connect()
hook cannot ask the routing table, so the datapath keeps the pod's local routes (table local) and
its addresses in its maps, and a follower keeps those entries in step: it listens for the
namespace's address and route changes on a netlink socket and rewrites what changed. Until a
change is written, the datapath decides with the facts before it (the window is one netlink
round trip; `synced()` tells when it is closed).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute

from .. import cancel
from ..process import in_netns

RT_TABLE_LOCAL = 255
RTN_LOCAL = 2
# RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
GROUPS = 0x10 | 0x40 | 0x100 | 0x400
RETRY_FIRST, RETRY_MOST = 0.05, 2.0  # seconds before a failed read or write is tried again, doubling


# Where routing is asked which source a connection leaving the pod takes: addresses no pod
# holds (documentation ranges), so the answer is the default route's.
SOURCE_PROBES = ("192.0.2.1", "2001:db8:ffff::1")


@dataclass(frozen=True)
class NamespaceFacts:
    local: tuple[str, ...]  # the local routing table's local routes, as CIDRs
    sources: tuple  # per family, the source the pod's traffic to a remote address takes


def read_facts(netns: str) -> NamespaceFacts:
    """The namespace's local routes, and the addresses its traffic to a remote destination takes
    as source: what routing answers for the default route, else the first address of an
    interface that is not lo (neither link-local nor ::6, Istio's inbound passthrough source)."""
    return in_netns(netns, _read_facts)


def _read_facts() -> NamespaceFacts:
    with IPRoute() as ip:  # made in the calling thread, which is in the namespace
        local = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ip.get_routes(family=family, table=RT_TABLE_LOCAL):
                if route["type"] == RTN_LOCAL and route.get_attr("RTA_TABLE", RT_TABLE_LOCAL) == RT_TABLE_LOCAL:
                    local.append(f"{route.get_attr('RTA_DST')}/{route['dst_len']}")
        lo = ip.link_lookup(ifname="lo")
        candidates = []
        for entry in ip.get_addr():
            address = ipaddress.ip_address(entry.get_attr("IFA_ADDRESS"))
            if entry["index"] not in lo and not (address.is_loopback or address.is_link_local or str(address) == "::6"):
                candidates.append(address)
        sources = []
        for probe in SOURCE_PROBES:
            version = ipaddress.ip_address(probe).version
            try:
                route = ip.route("get", dst=probe)[0]
                chosen = route.get_attr("RTA_PREFSRC")
            except Exception:  # no route: the pod has no default route for this family
                chosen = None
            if chosen:
                sources.append(ipaddress.ip_address(chosen))
            else:
                sources += [a for a in candidates if a.version == version][:1]
    return NamespaceFacts(tuple(sorted(set(local))), tuple(sources))


class Follower:
    """The namespace's facts now (`facts`), and once started, `write(facts)` whenever they change,
    from a thread of its own, which sleeps until the namespace's netlink events wake it.

    It subscribes before it reads, so no change falls between the two. An event says only that
    something changed, so after any it reads every fact anew: a lost event (the socket's queue
    overran, ENOBUFS) costs nothing but that full read, a broken socket is made again before the
    read, and a read or write that fails is tried again after a pause (`error` says what failed,
    until a retry succeeds). It stops for good only when the namespace is gone, or when stopped.
    """

    def __init__(self, netns: str, write: Callable[[NamespaceFacts], None]):
        self.netns, self._write = netns, write
        self.error: BaseException | None = None  # the last failure, while it lasts
        self.stopped: BaseException | None = None  # why it no longer follows (the namespace is gone)
        self.resyncs = 0  # full reads after a lost event, a broken socket or a failed read or write
        self._changed = threading.Condition()  # notified after every read, whether or not the facts changed
        self._socket = in_netns(netns, _subscribe)  # a netlink socket stays in the namespace it was made in
        try:
            self.facts = read_facts(netns)
        except BaseException:
            self._socket.close()
            raise
        self._stop_read, self._stop_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"follow-{netns}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        waiting = select.poll()  # not select(): a node's follower holds more than FD_SETSIZE descriptors
        waiting.register(self._stop_read, select.POLLIN)
        waiting.register(self._socket, select.POLLIN)
        retry_in: float | None = None  # seconds until a failed read or write is tried again
        try:
            while True:
                ready = {fd for fd, _ in waiting.poll(None if retry_in is None else retry_in * 1000)}
                if self._stop_read in ready:
                    return
                if self._socket.fileno() in ready and not self._drain():
                    waiting.unregister(self._socket)
                    self._socket.close()
                    self._socket = in_netns(self.netns, _subscribe)
                    waiting.register(self._socket, select.POLLIN)
                try:
                    self.refresh()
                    retry_in = None
                except FileNotFoundError as gone:  # setns() found no namespace of that name: the pod is gone
                    self.stopped = self.error = gone
                    return
                except Exception as error:
                    with self._changed:
                        self.error, self.resyncs = error, self.resyncs + 1
                        self._changed.notify_all()
                    retry_in = min(2 * (retry_in or RETRY_FIRST / 2), RETRY_MOST)
        except BaseException as error:  # not expected: stop, and say why
            self.stopped = self.error = error
        finally:
            with self._changed:
                self._changed.notify_all()

    def _drain(self) -> bool:
        """Read every queued event (they only say that something changed). False if the socket
        broke; a lost event (ENOBUFS: the queue overran) needs nothing more than the full read."""
        while True:
            try:
                self._socket.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError as error:
                self.resyncs += 1
                if error.errno == errno.ENOBUFS:
                    continue
                self.error = error
                return False

    def refresh(self) -> None:
        facts = read_facts(self.netns)
        if facts != self.facts:
            self._write(facts)
        with self._changed:
            self.facts, self.error = facts, None
            self._changed.notify_all()

    def synced(self) -> bool:
        """Whether the entries written match the namespace now."""
        return self.stopped is None and read_facts(self.netns) == self.facts

    def wait_synced(self, timeout: float) -> bool:
        """Wait until the entries written match the namespace as it is now (after a change the
        caller made): woken by each of the follower's reads, not by a clock. False if it stopped,
        or `timeout` passed (a stall: the follower reads within a netlink round trip)."""
        target = read_facts(self.netns)
        return self.wait_until(lambda: self.facts == target, timeout) and self.stopped is None

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait until condition() holds, checking it after each of the follower's reads (or
        failed reads); False once `timeout` passed or the follower stopped without it holding."""
        deadline, cut = time.monotonic() + timeout, cancel.armed()
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0 or self.stopped is not None or not self._thread.is_alive():
                    return condition()
                self._changed.wait(min(left, cancel.SLICE) if cut else left)
                if cut:
                    cancel.check()
            return True

    def stop(self) -> None:
        os.write(self._stop_write, b"x")
        if self._thread.is_alive():
            self._thread.join()
        for fd in (self._stop_read, self._stop_write):
            os.close(fd)
        self._socket.close()


def _subscribe() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.bind((0, GROUPS))
    return sock
