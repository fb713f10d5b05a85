"""Small HTTP backends for the demo: each answers every request with its own name.

python3 scripts/demo-backends.py web-1=127.0.20.1:9001 web-2=127.0.20.2:9001 ...
"""

from __future__ import annotations

import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler_for(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"{name}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main(specs: list[str]) -> None:
    for spec in specs:
        name, _, address = spec.partition("=")
        host, _, port = address.rpartition(":")
        server = ThreadingHTTPServer((host, int(port)), handler_for(name))
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"demo backends: {' '.join(specs)}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main(sys.argv[1:])
