"""One request from a pod, by protocol, and what the client saw of it, as one JSON line."""

import errno
import json
import os
import socket
import struct

from .common import IPPROTO_MPTCP, IPPROTO_UDPLITE, dns_query, read_exact, read_line, text

UDP_ELSEWHERE = 9
NO_ANSWER_WAIT = 0.3  # seconds to wait for an answer that cannot arrive (a wrong one shows in time)


def become(steps):
    """Change identity before making the socket: each UID:GID but the last keeps root as the saved
    uid (so the next step may still change), the last drops everything."""
    for index, step in enumerate(steps):
        uid, gid = map(int, step.split(":"))
        last = index == len(steps) - 1
        if os.geteuid() != 0:
            os.seteuid(0)  # back through the saved uid
        os.setgroups([])
        os.setresgid(gid, gid, gid if last else 0)
        os.setresuid(uid, uid, uid if last else 0)


def run_client(args):
    if args.become:
        become(args.become.split(","))
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    target = (args.dst, args.port)
    result = {}
    kind = (
        socket.SOCK_STREAM
        if args.proto in ("tcp", "tcp-send-close", "tcp-fastopen", "mptcp", "dns-tcp")
        else socket.SOCK_DGRAM
    )
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
        elif args.proto == "dns-udp-sendto-connected":  # connected elsewhere, this datagram names its own
            # (an answer from the server's port 53 does not match the connected peer: it never
            # arrives, with or without capture; where the query went is what counts)
            sock.connect((args.dst, UDP_ELSEWHERE))
            sock.sendto(dns_query(args.token, 0x5151), target)
            sock.settimeout(min(args.timeout, NO_ANSWER_WAIT))
            answer = sock.recv(2048)
            result.update(ok=answer[:2] == b"\x51\x51")
        elif args.proto == "tcp-fastopen":  # connect inside sendto, the request in the SYN if it may
            sock.settimeout(None)  # blocking: without a cookie yet the kernel connects first, then sends
            sock.sendto(args.token.encode() + b"\n", socket.MSG_FASTOPEN, target)
            sock.settimeout(args.timeout)
            result.update(sockname=text(sock.getsockname()), peername=text(sock.getpeername()))
            reply = read_line(sock, 65536)
            result["reply"] = json.loads(reply) if reply else None
            result["ok"] = bool(result["reply"]) and "error" not in result["reply"]
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
    except TimeoutError:
        result["result"] = "timeout"
    except ConnectionRefusedError:
        result["result"] = "refused"
    except ConnectionError as error:
        result["result"] = "reset" if error.errno else "closed"
    except OSError as error:
        names = {
            errno.ECONNREFUSED: "refused",
            errno.ENETUNREACH: "unreachable",
            errno.EHOSTUNREACH: "unreachable",
            errno.ECONNRESET: "reset",
        }
        result["result"] = names.get(error.errno, f"error:{errno.errorcode.get(error.errno, error.errno)}")
    except ValueError as error:
        result["result"] = f"bad-reply:{error}"
    finally:
        sock.close()
    print(json.dumps(result), flush=True)
