"""Many requests at once, from one process: TCP (a line out, a JSON line back) or DNS over UDP."""

import itertools
import json
import os
import socket
import threading

from .common import dns_query, read_line

DNS_ID = 0x5152


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


def dns_request(dst, port, token, timeout):
    """One A query on a connected UDP socket, as glibc's resolver sends it; ok if answered."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((dst, port))
            sock.send(dns_query(token, DNS_ID))
            answer = sock.recv(2048)
        return {"token": token, "result": "ok" if answer[:2] == DNS_ID.to_bytes(2, "big") else "bad-reply"}
    except OSError as error:
        return {"token": token, "result": f"error:{error}"}


def _rounds(targets, until):
    """Every target once; with `until`, round after round (tokens suffixed with the round) until
    that file exists: traffic for as long as a test changes things under it."""
    if until is None:
        yield from targets
        return
    for number in itertools.count():
        for target in targets:
            if os.path.exists(until):
                return
            yield {**target, "token": f"{target['token']}.{number}"}


def run_burst(args):
    """Each target {dst, port, token, proto: tcp (the default) or dns} once (or until --until FILE
    exists), `concurrency` at a time; a JSON list of results."""
    with open(args.targets, encoding="utf-8") as handle:
        targets = json.load(handle)
    results, lock, cursor = [], threading.Lock(), _rounds(targets, args.until)

    def worker():
        while True:
            with lock:
                target = next(cursor, None)
            if target is None:
                return
            request = dns_request if target.get("proto") == "dns" else tcp_request
            result = request(target["dst"], target["port"], target["token"], args.timeout)
            with lock:
                results.append(result)

    workers = [threading.Thread(target=worker) for _ in range(min(args.concurrency, len(targets)) or 1)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    print(json.dumps(results), flush=True)
