"""A stand-in OTLP/HTTP collector for the benchmarks: answers every POST (an export of spans)
200 at once, or with `--hang` never answers (a collector that hangs). `GET /count` gives the
exports and bytes received so far.

    python bench/otlp_sink.py --port P [--host 127.0.0.1] [--hang]
"""

from __future__ import annotations

import argparse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

received = {"exports": 0, "bytes": 0}
lock = threading.Lock()
never = threading.Event()


def handler(hang: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                received["exports"] += 1
                received["bytes"] += len(body)
            if hang:
                never.wait()
            self._answer(b"", "application/x-protobuf")

        def do_GET(self) -> None:
            with lock:
                text = f"{received['exports']} {received['bytes']}\n".encode()
            self._answer(text, "text/plain")

        def _answer(self, body: bytes, media: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hang", action="store_true", help="never answer an export")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), handler(args.hang))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
