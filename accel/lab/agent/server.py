"""The recording servers: TCP, UDP, UDP-Lite and DNS (over UDP and TCP), each answering with what
it saw and logging it."""

import json
import socket
import struct

from .common import (
    IPPROTO_UDPLITE,
    EventLog,
    accept_loop,
    answer,
    dns_answer,
    dns_token,
    forever,
    listen_both,
    read_exact,
    read_line,
    ready_and_wait,
    receive,
    text,
)


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
            log.record(
                role="server",
                proto="dns-udp",
                token=dns_token(query)[0],
                listener=listener,
                local=text(local),
                peer=text(peer),
            )
            answer(sock, dns_answer(query), peer, local)

    def dns_tcp_handler(listener):
        def handle(conn, peer):
            with conn:
                conn.settimeout(5)
                query = read_exact(conn, struct.unpack("!H", read_exact(conn, 2))[0])
                log.record(
                    role="server",
                    proto="dns-tcp",
                    token=dns_token(query)[0],
                    listener=listener,
                    local=text(conn.getsockname()),
                    peer=text(peer),
                )
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
