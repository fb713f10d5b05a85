"""A test backend: answers every TCP line and every UDP datagram with its own name.

Usage: backend.py NAME PORT  (listens on [::]:PORT dual-stack, TCP and UDP)
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading


class Server(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    reply = f"{name}\n".encode()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for _line in self.rfile:
                self.wfile.write(reply)
                self.wfile.flush()

    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", port))

    def serve_udp() -> None:
        while True:
            _data, peer = udp.recvfrom(2048)
            udp.sendto(reply, peer)

    threading.Thread(target=serve_udp, daemon=True).start()
    with Server(("::", port), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
