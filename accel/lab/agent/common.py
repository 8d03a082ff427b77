"""What every role shares: addresses as text, the event log, sockets made and read the same way,
and just enough of DNS's wire format for one A question and one A answer."""

import json
import os
import socket
import struct
import threading
import time

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_PKTINFO = 8
IPV6_RECVPKTINFO, IPV6_PKTINFO = 49, 50
IPPROTO_MPTCP, IPPROTO_UDPLITE = 262, 136  # TCP to iptables' -p tcp; not UDP to its -p udp
DNS_ANSWER = bytes([192, 0, 2, 53])  # the A record every lab DNS server answers


def text(address):
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    return [
        listen(family, kind, port, transparent, host, backlog, protocol)
        for (family, host), version in zip(pairs, (4, 6))
        if version in families
    ]


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
        address = socket.inet_pton(socket.AF_INET, source[0])
        info = (socket.SOL_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, address, bytes(4)))
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


def forever(target, *args):
    threading.Thread(target=target, args=args, daemon=True).start()


def accept_loop(sock, handler):
    while True:
        conn, peer = sock.accept()
        forever(handler, conn, peer)


def ready_and_wait():
    print("ready", flush=True)
    while True:
        time.sleep(3600)


# --- DNS wire format: just enough for one A question and one A answer -----------------------


def dns_query(token, query_id):
    labels = b"".join(bytes([len(part)]) + part.encode() for part in (token, "lab"))
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


def dns_token(message):
    """The first label of the question name, and the query's end offset."""
    offset, labels = 12, []
    while message[offset]:
        size = message[offset]
        labels.append(message[offset + 1 : offset + 1 + size].decode(errors="replace"))
        offset += 1 + size
    return (labels[0] if labels else ""), offset + 5


def dns_answer(query):
    _, end = dns_token(query)
    header = struct.pack("!HHHHHH", struct.unpack("!H", query[:2])[0], 0x8180, 1, 1, 0, 0)
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + DNS_ANSWER
    return header + query[12:end] + answer
