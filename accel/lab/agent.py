#!/usr/bin/env python3
"""The processes of a lab pod: recording servers, the sidecar, and the traffic client.

Standard library only: the lab copies this file into its work directory and runs it with
/usr/bin/python3, also as the proxy uid, which cannot read the checkout or the venv.

Every request carries a token (a TCP line, a UDP datagram, or the first label of a DNS name).
Each server and sidecar listener that sees a token appends one JSON line to the event log, so
the lab can tell, from real traffic, which listeners a request passed through and what each saw.
The log is an inherited file descriptor (--log-fd): no one else can open it.

  agent.py server  --name NAME --log-fd FD [--tcp PORT]... [--udp PORT]... [--udplite PORT]...
                   [--dns PORT]...
  agent.py sidecar --log-fd FD --outbound PORT --inbound PORT --dns PORT --upstream-dns ADDR
                   --uid UID --gid GID [--transparent] [--inbound-families 4,6]
  agent.py client  --proto tcp|tcp-send-close|mptcp|udp|udplite|ping|dns-udp|dns-udp-sendto|dns-tcp --dst ADDR
                   --port PORT --token TOKEN [--bind ADDR] [--first-dns ADDR]
                   [--first-connect ADDR:PORT] [--timeout SECONDS]
  agent.py burst   --targets FILE [--concurrency N]     many TCP requests at once
  agent.py http    --name NAME --port PORT               an HTTP server that says what it saw
  agent.py http-get --url URL                            one HTTP GET, reported as JSON
"""

import argparse
import errno
import json
import os
import select
import socket
import struct
import sys
import threading
import time

SO_ORIGINAL_DST = 80  # netfilter's getsockopt; IP6T_SO_ORIGINAL_DST has the same number
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_PKTINFO = 8
IPV6_RECVPKTINFO, IPV6_PKTINFO = 49, 50
INBOUND_PASSTHROUGH_SOURCE = {socket.AF_INET: "127.0.0.6", socket.AF_INET6: "::6"}
IPPROTO_MPTCP, IPPROTO_UDPLITE = 262, 136  # TCP to iptables' -p tcp; not UDP to its -p udp
DNS_ANSWER = bytes([192, 0, 2, 53])  # the A record every lab DNS server answers
# A token with this prefix asks the sidecar to read SO_ORIGINAL_DST only after the client has
# closed its end: a proxy slow to accept must still learn where a closed connection was going.
LATE = "late-"
MAX_PROXIED = 200  # a sidecar whose own connections are captured again loops: stop it there


def text(address):
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


class EventLog:
    def __init__(self, fd, agent):
        self.fd = fd
        self.agent = agent

    def record(self, **fields):
        # One write of one line to an O_APPEND file: lines from concurrent agents never mix.
        line = json.dumps({"time_ns": time.monotonic_ns(), "agent": self.agent, **fields}) + "\n"
        os.write(self.fd, line.encode())


def listen(family, kind, port, transparent=False, host=None, backlog=True, protocol=0):
    """A bound socket, listening unless `backlog` is False (to listen later, as another user)."""
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if transparent:  # TPROXY delivers connections for addresses that are not the socket's
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    if kind == socket.SOCK_DGRAM and protocol == 0:  # to learn each datagram's destination, and answer from it
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    sock.bind((host or ("0.0.0.0" if family == socket.AF_INET else "::"), port))
    if kind == socket.SOCK_STREAM and backlog:
        sock.listen(128)
    return sock


def listen_both(kind, port, transparent=False, hosts=(None, None), families=(4, 6), backlog=True, protocol=0):
    pairs = zip((socket.AF_INET, socket.AF_INET6), hosts)
    return [listen(family, kind, port, transparent, host, backlog, protocol)
            for (family, host), version in zip(pairs, (4, 6)) if version in families]


def receive(sock):
    """A datagram, its sender, and the address it was sent to."""
    data, ancillary, _, peer = sock.recvmsg(4096, socket.CMSG_SPACE(64))
    destination = sock.getsockname()[0]
    for level, kind, value in ancillary:
        if level == socket.SOL_IP and kind == IP_PKTINFO:
            destination = socket.inet_ntop(socket.AF_INET, value[8:12])
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            destination = socket.inet_ntop(socket.AF_INET6, value[:16])
    return data, peer, (destination, sock.getsockname()[1])


def answer(sock, data, peer, source):
    """Reply from the address the request went to, as a connected UDP client requires: a
    socket bound to the wildcard would otherwise answer from the route's preferred address."""
    if sock.family == socket.AF_INET:
        info = (socket.SOL_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_pton(socket.AF_INET, source[0]), bytes(4)))
    else:
        info = (socket.IPPROTO_IPV6, IPV6_PKTINFO, socket.inet_pton(socket.AF_INET6, source[0]) + struct.pack("=I", 0))
    sock.sendmsg([data], [info], 0, peer)


def read_line(conn, limit=512):
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def read_exact(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed early")
        data += chunk
    return data


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


def forever(target, *args):
    threading.Thread(target=target, args=args, daemon=True).start()


def accept_loop(sock, handler):
    while True:
        conn, peer = sock.accept()
        forever(handler, conn, peer)


# --- DNS wire format: just enough for one A question and one A answer -----------------------

def dns_query(token, query_id):
    labels = b"".join(bytes([len(part)]) + part.encode() for part in (token, "lab"))
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


def dns_token(message):
    """The first label of the question name, and the query's end offset."""
    offset, labels = 12, []
    while message[offset]:
        size = message[offset]
        labels.append(message[offset + 1:offset + 1 + size].decode(errors="replace"))
        offset += 1 + size
    return (labels[0] if labels else ""), offset + 5


def dns_answer(query):
    _, end = dns_token(query)
    header = struct.pack("!HHHHHH", struct.unpack("!H", query[:2])[0], 0x8180, 1, 1, 0, 0)
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + DNS_ANSWER
    return header + query[12:end] + answer


# --- server --------------------------------------------------------------------------------

def wait_for_close(conn, wait=3.0):
    """Until the peer has shut its end (and a little more, for its close to complete)."""
    poll = select.poll()
    poll.register(conn, select.POLLRDHUP)
    poll.poll(wait * 1000)
    time.sleep(0.2)


def run_server(args):
    log = EventLog(args.log_fd, args.name)

    def tcp_handler(listener):
        def handle(conn, peer):
            with conn:
                conn.settimeout(5)
                token = read_line(conn)
                seen = {"listener": listener, "local": text(conn.getsockname()), "peer": text(peer)}
                log.record(role="server", proto="tcp", token=token, **seen)
                conn.sendall(json.dumps({"agent": args.name, **seen}).encode() + b"\n")
        return handle

    def udp_loop(sock, listener):
        while True:
            data, peer, local = receive(sock)
            seen = {"listener": listener, "local": text(local), "peer": text(peer)}
            log.record(role="server", proto="udp", token=data.decode(errors="replace").strip(), **seen)
            answer(sock, json.dumps({"agent": args.name, **seen}).encode(), peer, local)

    def dns_udp_loop(sock, listener):
        while True:
            query, peer, local = receive(sock)
            log.record(role="server", proto="dns-udp", token=dns_token(query)[0], listener=listener,
                       local=text(local), peer=text(peer))
            answer(sock, dns_answer(query), peer, local)

    def dns_tcp_handler(listener):
        def handle(conn, peer):
            with conn:
                conn.settimeout(5)
                query = read_exact(conn, struct.unpack("!H", read_exact(conn, 2))[0])
                log.record(role="server", proto="dns-tcp", token=dns_token(query)[0], listener=listener,
                           local=text(conn.getsockname()), peer=text(peer))
                answer = dns_answer(query)
                conn.sendall(struct.pack("!H", len(answer)) + answer)
        return handle

    for port in args.tcp:
        for sock in listen_both(socket.SOCK_STREAM, port):
            forever(accept_loop, sock, tcp_handler(f"tcp:{port}"))
    def udplite_loop(sock, listener):
        while True:
            data, peer = sock.recvfrom(4096)
            seen = {"listener": listener, "local": text(sock.getsockname()), "peer": text(peer)}
            log.record(role="server", proto="udplite", token=data.decode(errors="replace").strip(), **seen)
            sock.sendto(json.dumps({"agent": args.name, **seen}).encode(), peer)

    for port in args.udp:
        for sock in listen_both(socket.SOCK_DGRAM, port):
            forever(udp_loop, sock, f"udp:{port}")
    for port in args.udplite:
        for sock in listen_both(socket.SOCK_DGRAM, port, protocol=IPPROTO_UDPLITE):
            forever(udplite_loop, sock, f"udplite:{port}")
    for port in args.dns:
        for sock in listen_both(socket.SOCK_DGRAM, port):
            forever(dns_udp_loop, sock, f"dns:{port}")
        for sock in listen_both(socket.SOCK_STREAM, port):
            forever(accept_loop, sock, dns_tcp_handler(f"dns:{port}"))
    ready_and_wait()


# --- sidecar -------------------------------------------------------------------------------

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
    transparent = listen_both(socket.SOCK_STREAM, args.inbound, True, families=families,
                              backlog=False) if args.transparent else None
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
        # Envoy's original_dst: SO_ORIGINAL_DST when conntrack knows it, else (TPROXY) the
        # local address, which then is the original destination.
        original = so_original or local
        log.record(role="sidecar", proto="tcp", listener=listener, token=token, local=text(local),
                   peer=text(peer), original_dst=text(original),
                   so_original_dst=text(so_original) if so_original else f"error:{answer}")
        target = upstream if listener == "dns" else original  # the DNS proxy asks its resolver
        if listener != "dns" and target[1] in own_ports and target[0] in (local[0], "127.0.0.1", "::1"):
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
            log.record(role="sidecar", proto="dns-udp", listener="dns", token=dns_token(query)[0],
                       local=text(local), peer=text(peer), original_dst=None)
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


def ready_and_wait():
    print("ready", flush=True)
    while True:
        time.sleep(3600)


# --- client --------------------------------------------------------------------------------

def run_client(args):
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    target = (args.dst, args.port)
    result = {}
    kind = socket.SOCK_STREAM if args.proto in ("tcp", "tcp-send-close", "mptcp", "dns-tcp") else socket.SOCK_DGRAM
    protocol = {"mptcp": IPPROTO_MPTCP, "udplite": IPPROTO_UDPLITE, "ping": socket.IPPROTO_ICMP}.get(args.proto, 0)
    sock = socket.socket(family, kind, protocol)
    sock.settimeout(args.timeout)
    try:
        if args.bind:
            sock.bind((args.bind, 0))
        # The same socket used before, as a program reuses one: a DNS query sent with sendto, or a
        # connect that fails; the request below must not inherit anything from it.
        if args.first_dns:
            sock.sendto(dns_query(args.token, 0x5150), (args.first_dns, 53))
            result["first"] = "answered" if sock.recvfrom(2048)[0][:2] == b"\x51\x50" else "bad-answer"
        if args.first_connect:
            host, port = args.first_connect.rsplit(":", 1)
            sock.settimeout(None)  # blocking: a failed non-blocking connect leaves the next one ECONNABORTED
            try:
                sock.connect((host.strip("[]"), int(port)))
                result["first"] = "connected"
            except OSError as error:
                result["first"] = errno.errorcode.get(error.errno, str(error.errno))
            sock.settimeout(args.timeout)
        if args.proto == "tcp-send-close":  # send and close at once, before any reply
            sock.connect(target)
            result.update(sockname=text(sock.getsockname()), peername=text(sock.getpeername()))
            sock.sendall(args.token.encode() + b"\n")
            result["ok"] = True
        elif args.proto == "dns-udp-sendto":  # an unconnected socket, destination per datagram
            sock.sendto(dns_query(args.token, 0x5151), target)
            answer, source = sock.recvfrom(2048)
            result.update(ok=answer[:2] == b"\x51\x51", reply_from=text(source))
        else:
            sock.connect(target)
            result.update(sockname=text(sock.getsockname()), peername=text(sock.getpeername()))
            if args.proto in ("tcp", "mptcp"):
                sock.sendall(args.token.encode() + b"\n")
                reply = read_line(sock, 65536)
                result["reply"] = json.loads(reply) if reply else None
                result["ok"] = bool(result["reply"]) and "error" not in result["reply"]
            elif args.proto == "ping":  # an unprivileged ICMP echo socket: the kernel fills id and checksum
                sock.send(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + args.token.encode())
                reply, source = sock.recvfrom(2048)
                result.update(ok=reply[0] == 0, reply_from=source[0])
            elif args.proto in ("udp", "udplite"):
                sock.send(args.token.encode())
                result["reply"] = json.loads(sock.recv(2048))
                result["ok"] = True
            elif args.proto == "dns-udp":  # connected, as glibc's resolver does
                sock.send(dns_query(args.token, 0x5151))
                answer = sock.recv(2048)
                result["ok"] = answer[:2] == b"\x51\x51"
            else:  # dns-tcp
                query = dns_query(args.token, 0x5151)
                sock.sendall(struct.pack("!H", len(query)) + query)
                answer = read_exact(sock, struct.unpack("!H", read_exact(sock, 2))[0])
                result["ok"] = answer[:2] == b"\x51\x51"
        result["result"] = "ok" if result.get("ok") else "bad-reply"
    except socket.timeout:
        result["result"] = "timeout"
    except ConnectionRefusedError:
        result["result"] = "refused"
    except ConnectionError as error:
        result["result"] = "reset" if error.errno else "closed"
    except OSError as error:
        names = {errno.ECONNREFUSED: "refused", errno.ENETUNREACH: "unreachable",
                 errno.EHOSTUNREACH: "unreachable", errno.ECONNRESET: "reset"}
        result["result"] = names.get(error.errno, f"error:{errno.errorcode.get(error.errno, error.errno)}")
    except ValueError as error:
        result["result"] = f"bad-reply:{error}"
    finally:
        sock.close()
    print(json.dumps(result), flush=True)


# --- many requests at once, HTTP ------------------------------------------------------------

def tcp_request(dst, port, token, timeout):
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((dst, port))
            sock.sendall(token.encode() + b"\n")
            reply = read_line(sock, 65536)
        return {"token": token, "result": "ok", "reply": json.loads(reply) if reply else None}
    except (OSError, ValueError) as error:
        return {"token": token, "result": f"error:{error}"}


def run_burst(args):
    """Each target {dst, port, token} once, `concurrency` at a time; a JSON list of results."""
    with open(args.targets, encoding="utf-8") as handle:
        targets = json.load(handle)
    results, lock, cursor = [], threading.Lock(), iter(targets)

    def worker():
        while True:
            with lock:
                target = next(cursor, None)
            if target is None:
                return
            result = tcp_request(target["dst"], target["port"], target["token"], args.timeout)
            with lock:
                results.append(result)

    workers = [threading.Thread(target=worker) for _ in range(min(args.concurrency, len(targets)) or 1)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    print(json.dumps(results), flush=True)


def run_http(args):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen = {"agent": args.name, "path": self.path, "local": text(self.connection.getsockname()),
                    "peer": text(self.client_address)}
            body = json.dumps(seen).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET

    server = Server(("0.0.0.0", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ready_and_wait()


def run_http_get(args):
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(args.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=args.timeout)
    try:
        connection.request("GET", url.path or "/")
        response = connection.getresponse()
        body = response.read().decode()
        result = {"status": response.status, "headers": {name.lower(): value for name, value in response.getheaders()},
                  "body": json.loads(body) if body.startswith("{") else body}
    except OSError as error:
        result = {"status": None, "error": str(error)}
    print(json.dumps(result), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = parser.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server")
    server.add_argument("--name", required=True)
    server.add_argument("--log-fd", type=int, required=True)
    for option in ("--tcp", "--udp", "--udplite", "--dns"):
        server.add_argument(option, type=int, action="append", default=[])
    sidecar = roles.add_parser("sidecar")
    sidecar.add_argument("--log-fd", type=int, required=True)
    for option in ("--outbound", "--inbound", "--dns", "--uid", "--gid"):
        sidecar.add_argument(option, type=int, required=True)
    sidecar.add_argument("--upstream-dns", required=True)
    sidecar.add_argument("--transparent", action="store_true")
    sidecar.add_argument("--inbound-families", default="4,6")
    client = roles.add_parser("client")
    client.add_argument("--proto", required=True,
                        choices=["tcp", "tcp-send-close", "mptcp", "udp", "udplite", "ping", "dns-udp",
                                 "dns-udp-sendto", "dns-tcp"])
    client.add_argument("--dst", required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--token", required=True)
    client.add_argument("--bind")
    client.add_argument("--first-dns")
    client.add_argument("--first-connect")
    client.add_argument("--timeout", type=float, default=2.0)
    burst = roles.add_parser("burst")
    burst.add_argument("--targets", required=True)
    burst.add_argument("--concurrency", type=int, default=64)
    burst.add_argument("--timeout", type=float, default=10.0)
    http_server = roles.add_parser("http")
    http_server.add_argument("--name", required=True)
    http_server.add_argument("--port", type=int, required=True)
    http_get = roles.add_parser("http-get")
    http_get.add_argument("--url", required=True)
    http_get.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    roles = {"server": run_server, "sidecar": run_sidecar, "client": run_client, "burst": run_burst,
             "http": run_http, "http-get": run_http_get}
    roles[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
