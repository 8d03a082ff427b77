"""Byte-exact streams: a client and a server that send each other known pseudo-random bytes and
say what they received (count, sha256, how the stream ended), for the short-circuit's tests.

The client's first line is a JSON header (a sidecar logs it as the token); then

    normal       client sends `send` bytes, shuts down its side (or resets: end "rst"); the server
                 reads to the end, then sends `reply` bytes and closes;
    server_first the server sends `reply` bytes and shuts down its side first; the client reads
                 them to the end, then sends its bytes;
    pause        as normal, but the client stops after half its bytes until the file `resume`
                 exists (a test changes the capture under an open connection meanwhile); the
                 server logs a "started" event once it has the header, so the test knows when.

Each side reads in the header's way: "bulk" (64 KiB reads), "small" (777 bytes), "byte" (one at a
time) or "slow" (64 KiB reads, 20 ms apart), and writes in `write` byte chunks; with io "poll"
(the default) its socket is non-blocking, driven by poll() as an event loop drives one, with
"blocking" it reads with blocking recv() and counts the EAGAINs a blocking recv should never give. The server logs
what it received as an event; the client prints it as JSON (with --parallel N, a list, N
connections at once, each with its own seed).
"""

import hashlib
import json
import os
import random
import select
import socket
import struct
import threading
import time

from .common import EventLog, accept_loop, forever, listen_both, ready_and_wait

READS = {"bulk": 65536, "small": 777, "byte": 1, "slow": 65536}


def pattern(seed, size):
    return random.Random(seed).randbytes(size)


def _wait(sock, events, timeout=30.0):
    poller = select.poll()
    poller.register(sock, events)
    if not poller.poll(timeout * 1000):
        raise TimeoutError("no progress in 30 s")


def read_to_end(sock, mode, io="poll"):
    """(bytes, how it ended: eof, or the error's name, and how many times a blocking recv said
    EAGAIN). With io "poll" the socket is non-blocking and read when poll says so, as an event
    loop (Envoy, HAProxy, nginx) reads; with "blocking", a blocking recv, retried after EAGAIN."""
    chunks, size, eagain = [], READS[mode], 0
    try:
        while True:
            if io == "poll":
                _wait(sock, select.POLLIN)
            try:
                chunk = sock.recv(size)
            except BlockingIOError:
                eagain += io == "blocking"
                continue
            if not chunk:
                return b"".join(chunks), "eof", eagain
            chunks.append(chunk)
            if mode == "slow":
                time.sleep(0.02)
    except OSError as error:
        return b"".join(chunks), type(error).__name__, eagain


def send_all(sock, data, chunk):
    """Every byte, in `chunk` byte writes; "ok" or the error's name."""
    try:
        for offset in range(0, len(data), chunk):
            piece = memoryview(data)[offset : offset + chunk]
            while piece:
                try:
                    piece = piece[sock.send(piece) :]
                except BlockingIOError:
                    _wait(sock, select.POLLOUT)
        return "ok"
    except OSError as error:
        return type(error).__name__


def summary(data, ended, eagain=0):
    found = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "end": ended}
    return {**found, "eagain": eagain} if eagain else found


def read_header(sock):
    line = b""
    while not line.endswith(b"\n"):
        try:
            byte = sock.recv(1)
        except BlockingIOError:
            _wait(sock, select.POLLIN)
            continue
        if not byte:
            break
        line += byte
    return json.loads(line) if line.strip() else None


def run_stream_server(args):
    log = EventLog(args.log_fd, args.name)

    def handle(conn, peer):
        with conn:
            conn.setblocking(False)
            header = read_header(conn)
            if header is None:
                return
            conn.setblocking(header.get("io", "poll") == "blocking")
            if header.get("flow") == "pause":  # the test changes things under it once it is open end to end
                log.record(role="stream-server", token=header["token"], started=True)
            reply = pattern(header["seed"] + 1, header["reply"])
            sent = "ok"
            if header.get("flow") == "server_first":
                sent = send_all(conn, reply, header["write"])
                try:
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            data, ended, eagain = read_to_end(conn, header["server_read"], header.get("io", "poll"))
            log.record(role="stream-server", token=header["token"], received=summary(data, ended, eagain))
            if header.get("flow") != "server_first":
                sent = send_all(conn, reply, header["write"])
            log.record(role="stream-server", token=header["token"], sent=sent)

    for sock in listen_both(socket.SOCK_STREAM, args.port):
        forever(accept_loop, sock, handle)
    ready_and_wait()


def one_client(args, header):
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    data = pattern(header["seed"], header["send"])
    result = {"token": header["token"]}
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        sock.connect((args.dst, args.port))
    except OSError as error:
        return {**result, "connect": type(error).__name__}
    with sock:
        sock.sendall(json.dumps(header).encode() + b"\n")
        io = header.get("io", "poll")
        sock.setblocking(io == "blocking")
        if header.get("flow") == "server_first":
            received, ended, eagain = read_to_end(sock, header["client_read"], io)
            result["received"] = summary(received, ended, eagain)
        half = len(data) // 2 if header.get("flow") == "pause" else len(data)
        result["sent"] = send_all(sock, data[:half], header["write"])
        if header.get("flow") == "pause":
            while not os.path.exists(header["resume"]):
                time.sleep(0.02)
            result["sent"] = send_all(sock, data[half:], header["write"])
        if header.get("end") == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return result  # closing now sends a reset
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            result["shutdown"] = type(error).__name__
        if header.get("flow") != "server_first":
            received, ended, eagain = read_to_end(sock, header["client_read"], io)
            result["received"] = summary(received, ended, eagain)
    return result


def run_stream_client(args):
    base = json.loads(args.header)
    headers = (
        [base]
        if args.parallel == 1
        else [
            {**base, "seed": base["seed"] + 2 * index, "token": f"{base['token']}-{index}"}
            for index in range(args.parallel)
        ]
    )
    results = [None] * len(headers)

    def run(index):
        results[index] = one_client(args, headers[index])

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(headers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results if args.parallel > 1 else results[0]))
