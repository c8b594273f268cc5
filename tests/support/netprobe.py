"""A tiny TCP/UDP probe run inside test namespaces: who answered, and whom did they see.

``python -m tests.support.netprobe serve LABEL PROTO PORT [PORT...]`` answers each connection (TCP)
or datagram (UDP) with ``LABEL <peer ip>`` and prints ``ready`` once listening.
``python -m tests.support.netprobe call PROTO HOST PORT [--source IP] [--timeout S]`` prints the
answer, or exits 1 when none came (refused, dropped, timed out).
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys


def serve(label: str, proto: str, ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    for port in ports:
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        if proto == "tcp":
            s.listen(64)
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if proto == "tcp":
                conn, peer = sock.accept()
                with conn:
                    conn.sendall(f"{label} {peer[0]}\n".encode())
            else:
                _, peer = sock.recvfrom(2048)
                sock.sendto(f"{label} {peer[0]}\n".encode(), peer)


def call(proto: str, host: str, port: int, source: str | None, timeout: float) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        try:
            if proto == "tcp":
                s.connect((host, port))
                data = s.recv(2048)
            else:
                s.sendto(b"hello", (host, port))
                data, _ = s.recvfrom(2048)
        except OSError as exc:
            print(f"no answer: {exc}", file=sys.stderr)
            return 1
    print(data.decode().strip())
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("label")
    s.add_argument("proto", choices=["tcp", "udp"])
    s.add_argument("ports", type=int, nargs="+")
    c = sub.add_parser("call")
    c.add_argument("proto", choices=["tcp", "udp"])
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--source")
    c.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.label, args.proto, args.ports)
    else:
        sys.exit(call(args.proto, args.host, args.port, args.source, args.timeout))


if __name__ == "__main__":
    main()
