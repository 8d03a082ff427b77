"""The processes of a lab pod: recording servers, the sidecar, and the traffic client.

Standard library only, and nothing of accel: the lab ships this package into its work directory
as one zipapp, agent.pyz, and runs it with /usr/bin/python3 -I -S, also as the proxy uid, which
cannot read the checkout or the venv. One module a role; common.py has what they share.

Every request carries a token (a TCP line, a UDP datagram, or the first label of a DNS name).
Each server and sidecar listener that sees a token appends one JSON line to the event log, so
the lab can tell, from real traffic, which listeners a request passed through and what each saw.
The log is an inherited file descriptor (--log-fd): no one else can open it.

  agent.pyz server  --name NAME --log-fd FD [--tcp PORT]... [--udp PORT]... [--udplite PORT]...
                    [--dns PORT]...
  agent.pyz sidecar --log-fd FD --outbound PORT --inbound PORT --dns PORT --upstream-dns ADDR
                    --uid UID --gid GID [--transparent] [--inbound-families 4,6]
  agent.pyz client  --proto tcp|tcp-send-close|mptcp|udp|udplite|ping|dns-udp|dns-udp-sendto|dns-tcp --dst ADDR
                    --port PORT --token TOKEN [--bind ADDR] [--first-dns ADDR]
                    [--first-connect ADDR:PORT] [--become UID:GID,...] [--timeout SECONDS]
  agent.pyz burst   --targets FILE [--concurrency N] [--until FILE]   many TCP requests at once
  agent.pyz sink    --port PORT                           accept, read to EOF, close (churn.py)
  agent.pyz churn   --dst ADDR,... --port PORT --count N  short connections, the app closing first
  agent.pyz http    --name NAME --port PORT               an HTTP server that says what it saw
  agent.pyz http-get --url URL                            one HTTP GET, reported as JSON
  agent.pyz stream-server --name NAME --log-fd FD --port PORT   byte-exact streams (stream.py)
  agent.pyz stream-client --dst ADDR --port PORT --header JSON [--parallel N] [--timeout S]
"""

import argparse
import sys

from .burst import run_burst
from .churn import run_churn, run_sink
from .client import run_client
from .server import run_server
from .sidecar import run_sidecar
from .stream import run_stream_client, run_stream_server
from .web import run_http, run_http_get


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
    client.add_argument(
        "--proto",
        required=True,
        choices=[
            "tcp",
            "tcp-send-close",
            "tcp-fastopen",
            "mptcp",
            "udp",
            "udplite",
            "ping",
            "dns-udp",
            "dns-udp-sendto",
            "dns-udp-sendto-connected",
            "dns-tcp",
        ],
    )
    client.add_argument("--dst", required=True)
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--token", required=True)
    client.add_argument("--bind")
    client.add_argument("--first-dns")
    client.add_argument("--first-connect")
    client.add_argument(
        "--become",
        metavar="UID:GID[,UID:GID]",
        help="change identity first (started as root): each step but the last keeps root saved",
    )
    client.add_argument("--timeout", type=float, default=2.0)
    burst = roles.add_parser("burst")
    burst.add_argument("--targets", required=True)
    burst.add_argument("--concurrency", type=int, default=64)
    burst.add_argument("--timeout", type=float, default=10.0)
    burst.add_argument("--until", help="repeat the targets until this file exists")
    sink = roles.add_parser("sink")
    sink.add_argument("--port", type=int, required=True)
    churn = roles.add_parser("churn")
    churn.add_argument("--dst", required=True, help="comma-separated, taken round-robin")
    churn.add_argument("--port", type=int, required=True)
    churn.add_argument("--count", type=int, required=True)
    churn.add_argument("--timeout", type=float, default=5.0)
    http_server = roles.add_parser("http")
    http_server.add_argument("--name", required=True)
    http_server.add_argument("--port", type=int, required=True)
    http_get = roles.add_parser("http-get")
    http_get.add_argument("--url", required=True)
    http_get.add_argument("--timeout", type=float, default=5.0)
    stream_server = roles.add_parser("stream-server")
    stream_server.add_argument("--name", required=True)
    stream_server.add_argument("--log-fd", type=int, required=True)
    stream_server.add_argument("--port", type=int, required=True)
    stream_client = roles.add_parser("stream-client")
    stream_client.add_argument("--dst", required=True)
    stream_client.add_argument("--port", type=int, required=True)
    stream_client.add_argument("--header", required=True, help="the stream's JSON header (stream.py)")
    stream_client.add_argument("--parallel", type=int, default=1)
    stream_client.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    roles = {
        "server": run_server,
        "sidecar": run_sidecar,
        "client": run_client,
        "burst": run_burst,
        "sink": run_sink,
        "churn": run_churn,
        "http": run_http,
        "http-get": run_http_get,
        "stream-server": run_stream_server,
        "stream-client": run_stream_client,
    }
    roles[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
