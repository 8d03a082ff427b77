"""Connection churn, as an app that makes short connections and closes first: `churn` connects
round-robin to a list of destinations, sends a byte and closes (so TIME_WAIT stays on its side),
`sink` accepts and reads each connection to EOF. The question is port capacity: whether every
connect gets a source port while the earlier ones sit in TIME_WAIT."""

import errno
import json
import selectors
import socket
import time

from .common import listen_both


def run_sink(args):
    """Accept on --port (IPv4 and IPv6), read every connection to EOF, close; forever."""
    listeners = listen_both(socket.SOCK_STREAM, args.port)
    chooser = selectors.DefaultSelector()
    for sock in listeners:
        sock.listen(4096)
        sock.setblocking(False)
        chooser.register(sock, selectors.EVENT_READ, "listener")
    while True:
        for key, _ in chooser.select():
            sock = key.fileobj
            if key.data == "listener":
                try:
                    accepted, _ = sock.accept()
                except BlockingIOError:
                    continue
                accepted.setblocking(False)
                chooser.register(accepted, selectors.EVENT_READ, "connection")
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                chooser.unregister(sock)
                sock.close()


def run_churn(args):
    """--count connections round-robin over --dst (comma-separated) on --port; one JSON line:
    how many succeeded, the failures by errno name, and the seconds it took."""
    destinations = args.dst.split(",")
    ok, errors = 0, {}
    started = time.monotonic()
    for number in range(args.count):
        dst = destinations[number % len(destinations)]
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(args.timeout)
            sock.connect((dst, args.port))
            sock.send(b"x")
            ok += 1
        except OSError as error:
            name = errno.errorcode.get(error.errno, str(error)) if error.errno else type(error).__name__
            errors[name] = errors.get(name, 0) + 1
        finally:
            sock.close()
    print(json.dumps({"ok": ok, "errors": errors, "seconds": round(time.monotonic() - started, 3)}), flush=True)
