"""A local HTTP server that answers the Kubernetes Pod API as the API server does, for accel-cni's
podInfo "kubernetes" source (there is no cluster here): GET /api/v1/namespaces/NS/pods/NAME with
a bearer token, the Pod as JSON, a v1 Status for errors. It can fail the first requests (503) to
exercise retries. Run in a thread (FakeApiServer) or as a process in a namespace:

    python -m tests.fake_apiserver --pods PODS.json --port PORT [--token T] [--fail-first N]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

POD_PATH = re.compile(r"/api/v1/namespaces/([a-z0-9-]+)/pods/([a-z0-9.-]+)")
TOKEN = "accel-test-token"


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, pods: dict[str, dict], port: int = 0, token: str = TOKEN, fail_first: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.pods, self.token, self.fail_first = pods, token, fail_first
        self.requests: list[str] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig for this server (JSON is YAML)."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "test",
                    "clusters": [{"name": "test", "cluster": {"server": self.url}}],
                    "users": [{"name": "test", "user": {"token": token or self.token}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                }
            )
        )
        return path

    def __enter__(self) -> FakeApiServer:
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(path)
            if len(self.requests) <= self.fail_first:
                return 503, status(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        if authorization != f"Bearer {self.token}":
            return 401, status(401, "Unauthorized", "Unauthorized")
        match = POD_PATH.fullmatch(path.split("?")[0])
        if not match:
            return 404, status(404, "NotFound", f"the server could not find the requested resource {path}")
        pod = self.pods.get(f"{match.group(1)}/{match.group(2)}")
        if pod is None:
            return 404, status(404, "NotFound", f'pods "{match.group(2)}" not found')
        return 200, pod


class _Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def do_GET(self):  # noqa: N802 - http.server's name
        code, body = self.server.answer(self.path, self.headers.get("Authorization"))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def pod(
    namespace: str,
    name: str,
    *,
    annotations: dict | None = None,
    labels: dict | None = None,
    proxy: dict | None = None,
    containers: tuple[str, ...] = ("app",),
    init: tuple[str, ...] = (),
) -> dict:
    """A Pod as the API server returns it; proxy: the istio-proxy container's fields (env,
    securityContext, args), or None for a pod without one."""
    listed = [{"name": c, "image": "app"} for c in containers]
    if proxy is not None:
        listed.append({"name": "istio-proxy", "image": "proxyv2", **proxy})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}, "labels": labels or {}},
        "spec": {"initContainers": [{"name": c, "image": "init"} for c in init], "containers": listed},
        "status": {"phase": "Pending"},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", required=True, help="JSON: {NAMESPACE/NAME: Pod}")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--fail-first", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeApiServer(json.loads(Path(args.pods).read_text()), args.port, args.token, args.fail_first)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
