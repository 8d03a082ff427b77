"""The sidecar: a minimal proxy that behaves towards capture as Envoy does."""

import errno
import json
import os
import select
import socket
import struct
import threading
import time

from .common import EventLog, accept_loop, answer, dns_token, forever, listen_both, ready_and_wait, receive, text

SO_ORIGINAL_DST = 80  # netfilter's getsockopt; IP6T_SO_ORIGINAL_DST has the same number
INBOUND_PASSTHROUGH_SOURCE = {socket.AF_INET: "127.0.0.6", socket.AF_INET6: "::6"}
# A token with this prefix asks the sidecar to read SO_ORIGINAL_DST only after the client has
# closed its end: a proxy slow to accept must still learn where a closed connection was going.
LATE = "late-"
MAX_PROXIED = 200  # a sidecar whose own connections are captured again loops: stop it there


def original_dst(sock):
    """SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6): (address, port), or the error's
    name (ENOENT: no entry) as a string."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack("!H", raw[2:4])[0]
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))


def peek_token(conn, wait=3.0):
    """The request's token, read without consuming anything: a text line, or the name in a DNS
    query over TCP (which starts with a two-byte length, so with a zero byte)."""
    deadline = time.monotonic() + wait
    data = b""
    while time.monotonic() < deadline:
        data = conn.recv(4096, socket.MSG_PEEK)
        if not data:
            break
        if data[0] == 0 and len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
            return dns_token(data[2:])[0]
        if data[0] != 0 and b"\n" in data:
            return data.split(b"\n", 1)[0].decode(errors="replace").strip()
        time.sleep(0.005)
    return data[:64].decode(errors="replace").strip()


def pump(source, sink):
    try:
        while True:
            chunk = source.recv(65536)
            if not chunk:
                break
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def wait_for_close(conn, wait=3.0):
    """Until the peer has shut its end (and a little more, for its close to complete)."""
    poll = select.poll()
    poll.register(conn, select.POLLRDHUP)
    poll.poll(wait * 1000)
    time.sleep(0.2)


def run_sidecar(args):
    """A minimal proxy with Envoy's capture-facing behaviour: it learns the original destination
    with SO_ORIGINAL_DST (or, under TPROXY, from its local address), forwards outbound traffic
    there, forwards inbound traffic from 127.0.0.6 (::6) as Envoy's inbound passthrough does, and
    answers DNS through its upstream resolver."""
    log = EventLog(args.log_fd, "sidecar")
    families = tuple(int(f) for f in args.inbound_families.split(","))
    # Only the TPROXY listener is made with privilege (IP_TRANSPARENT needs it), and it starts
    # listening as the proxy, as Envoy (uid 1337 with capabilities) does. Every other socket is
    # made as the proxy's uid/gid, as Istio's proxy and agent do: iptables' owner match (e.g. the
    # DNS conntrack-zone rules) sees the credentials a socket was created with.
    transparent = (
        listen_both(socket.SOCK_STREAM, args.inbound, True, families=families, backlog=False)
        if args.transparent
        else None
    )
    os.setgroups([])
    os.setgid(args.gid)
    os.setuid(args.uid)
    if transparent:
        for sock in transparent:
            sock.listen(128)
    loopback = ("127.0.0.1", "::1")  # where istio-agent's DNS proxy listens
    sockets = {
        "outbound": listen_both(socket.SOCK_STREAM, args.outbound),
        "inbound": transparent or listen_both(socket.SOCK_STREAM, args.inbound, families=families),
        "dns-tcp": listen_both(socket.SOCK_STREAM, args.dns, hosts=loopback),
        "dns-udp": listen_both(socket.SOCK_DGRAM, args.dns, hosts=loopback),
    }
    own_ports = {args.outbound, args.inbound, args.dns}
    upstream = (args.upstream_dns, 53)  # the agent's resolver, whatever the app asked for
    proxied = threading.BoundedSemaphore(MAX_PROXIED)

    def proxy_tcp(listener):
        def handle(conn, peer):
            if not proxied.acquire(blocking=False):
                conn.close()
                return
            try:
                with conn:
                    serve(conn, peer, listener)
            finally:
                proxied.release()

        return handle

    def serve(conn, peer, listener):
        conn.settimeout(5)
        token = peek_token(conn)
        if token.startswith(LATE):
            wait_for_close(conn)
        local = conn.getsockname()
        answer = original_dst(conn)
        so_original = answer if isinstance(answer, tuple) else None
        # Envoy's original_dst: SO_ORIGINAL_DST when conntrack knows it, else (TPROXY, inbound)
        # the local address, which then is the original destination. Outbound is redirected in
        # every mode: without an answer it has no original destination (under eBPF its local
        # port is the one its destination was spread to, not a destination).
        original = so_original or (local if listener == "inbound" else None)
        log.record(
            role="sidecar",
            proto="tcp",
            listener=listener,
            token=token,
            local=text(local),
            peer=text(peer),
            original_dst=text(original) if original else None,
            so_original_dst=text(so_original) if so_original else f"error:{answer}",
        )
        target = upstream if listener == "dns" else original  # the DNS proxy asks its resolver
        if target is None or (
            listener != "dns" and target[1] in own_ports and target[0] in (local[0], "127.0.0.1", "::1")
        ):
            conn.sendall(json.dumps({"error": "no original destination"}).encode() + b"\n")
            return
        bind = INBOUND_PASSTHROUGH_SOURCE[conn.family] if listener == "inbound" else None
        relay(conn, target, bind)

    def relay(conn, target, bind):
        """Byte for byte in both directions, as Envoy's TCP proxy does."""
        try:
            family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
            upstream = socket.socket(family, socket.SOCK_STREAM)
            upstream.settimeout(5)
            if bind:
                upstream.bind((bind, 0))
            upstream.connect(target[:2])
        except OSError as error:
            conn.sendall(json.dumps({"error": f"upstream {text(target)}: {error}"}).encode() + b"\n")
            return
        with upstream:
            back = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
            back.start()
            pump(conn, upstream)
            back.join(10)

    def dns_udp(sock):
        while True:
            query, peer, local = receive(sock)
            log.record(
                role="sidecar",
                proto="dns-udp",
                listener="dns",
                token=dns_token(query)[0],
                local=text(local),
                peer=text(peer),
                original_dst=None,
            )
            forever(answer_udp, sock, query, peer, local)

    def answer_udp(sock, query, peer, local):
        family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.settimeout(3)
            try:
                client.sendto(query, upstream)
                reply, _ = client.recvfrom(2048)
            except OSError:
                return
        answer(sock, reply, peer, local)

    for listener in ("outbound", "inbound"):
        for sock in sockets[listener]:
            forever(accept_loop, sock, proxy_tcp(listener))
    for sock in sockets["dns-tcp"]:
        forever(accept_loop, sock, proxy_tcp("dns"))
    for sock in sockets["dns-udp"]:
        forever(dns_udp, sock)
    ready_and_wait()
