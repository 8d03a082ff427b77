"""HTTP: a server that says what it saw, and one GET reported as JSON. (Not named http.py, which
would shadow the standard library's http wherever this directory is on sys.path.)"""

import json
import socket
import threading

from .common import ready_and_wait, text


def run_http(args):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen = {
                "agent": args.name,
                "path": self.path,
                "local": text(self.connection.getsockname()),
                "peer": text(self.client_address),
            }
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
        result = {
            "status": response.status,
            "headers": {name.lower(): value for name, value in response.getheaders()},
            "body": json.loads(body) if body.startswith("{") else body,
        }
    except OSError as error:
        result = {"status": None, "error": str(error)}
    print(json.dumps(result), flush=True)
