"""Serve the browser demo (this folder) on HOST:PORT with the cross-origin isolation headers that
WebAssembly threads need. `make demo` runs it; HOST=0.0.0.0 serves a phone on the same network
(a file pick works over plain HTTP; the camera needs HTTPS or localhost).

    python web/serve.py [--host 127.0.0.1] [--port 8000]

Exposed to a network, it serves only what the page loads (the page, the three model files,
onnxruntime-web's scripts and WebAssembly), never a folder listing, a symbolic link or any other
file, with at most MAX_WORKERS requests at once on sockets that time out, at most QUEUE_PER_WORKER
more waiting, and HEADER_DEADLINE_S for a client to send its whole request: idle or trickling
connections cannot pile up threads or hold the workers.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import io
import math
import os
import socket
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))   # the project's formats registry (standard library only)
from export.formats import METADATA_SIDECAR, web_files  # noqa: E402

PAGE_FILES = {"index.html", "app.js", "style.css", *(f"models/{name}" for name in web_files())}
RUNTIME_DIR = "node_modules/onnxruntime-web/dist/"   # the page asks it for ort-wasm-*.{mjs,wasm}
RUNTIME_SUFFIXES = (".js", ".mjs", ".wasm")
MAX_WORKERS = 16
QUEUE_PER_WORKER = 4         # connections waiting for a worker, per worker; more are closed at once
TIMEOUT_S = 10.0             # per read: a client that stops sending
HEADER_DEADLINE_S = 15.0     # in all, for the request line and headers: a client that sends a byte at a time


def served_file(root: Path, url_path: str) -> Path | None:
    """The file under root that a request path names, if the page needs it; None for anything else
    (other files, folders, '..', NUL bytes, undecodable escapes)."""
    try:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path, errors="strict").lstrip("/")
    except (UnicodeDecodeError, ValueError):
        return None
    rel = rel or "index.html"
    if "\x00" in rel or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        return None
    runtime = (rel.startswith(RUNTIME_DIR) and "/" not in rel[len(RUNTIME_DIR):]
               and rel.endswith(RUNTIME_SUFFIXES))
    path = root / rel
    if not (rel in PAGE_FILES or runtime) or not path.is_file():
        return None
    return path if path.resolve() == root.resolve() / rel else None   # a link anywhere on the way: not served


class DeadlineReader(io.RawIOBase):
    """A socket's reads, each waiting at most `timeout` s and all of them ending by `deadline`
    (time.monotonic()): no thread per connection is needed to cut off a trickling client."""

    def __init__(self, sock: socket.socket, timeout: float, deadline: float):
        self.sock, self.timeout, self.deadline = sock, timeout, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")   # the handler's own timeout path
        self.sock.settimeout(min(self.timeout, left))
        return self.sock.recv_into(buffer)


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".onnx": "application/octet-stream"}
    timeout = TIMEOUT_S  # on the socket: a client that stops sending frees its worker
    header_deadline = HEADER_DEADLINE_S

    def setup(self):
        super().setup()
        self.reader = DeadlineReader(self.connection, self.timeout, time.monotonic() + self.header_deadline)
        self.rfile = io.BufferedReader(self.reader)

    def parse_request(self):
        self.reader.deadline = math.inf   # the request is in: the reply may take as long as the client reads
        return super().parse_request()

    def send_head(self):
        path = served_file(Path(self.directory), self.path)
        if path is None:
            self.send_error(404, "not part of the demo")
            return None
        f = open(path, "rb")
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
        self.end_headers()
        return f

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):  # quiet: one line per request is noise in a demo
        pass


class BoundedServer(http.server.HTTPServer):
    """HTTPServer with a fixed pool of worker threads instead of one thread per connection."""

    def __init__(self, address, handler, workers: int = MAX_WORKERS):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="demo")  # first: a failed bind closes the server
        self.slots = threading.BoundedSemaphore(workers * (1 + QUEUE_PER_WORKER))   # running + waiting
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):   # the queue is full: this connection is closed, not queued
            self.shutdown_request(request)
            return
        self.pool.submit(self.handle_in_worker, request, client_address)

    def handle_in_worker(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception as e:  # noqa: BLE001 - a client that goes away mid-reply: one line, the server goes on
            print(f"warning: request from {client_address[0]}: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def server_close(self):
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_server(host: str, port: int, root: Path = HERE, timeout: float = TIMEOUT_S,
                workers: int = MAX_WORKERS, header_deadline: float = HEADER_DEADLINE_S) -> BoundedServer:
    handler = type("DemoHandler", (Handler,), {"timeout": timeout, "header_deadline": header_deadline})
    return BoundedServer((host, port), functools.partial(handler, directory=str(root)), workers)


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 0-65535 (0: any free port)")
    return port


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for other devices (default: %(default)s)")
    ap.add_argument("--port", type=port_number, default=8000, help="port, 0-65535; 0 picks a free one (default: %(default)s)")
    args = ap.parse_args(argv)
    missing = [p for p in (f"models/{web_files()[0]}", f"models/{METADATA_SIDECAR}", "node_modules/onnxruntime-web")
               if not (HERE / p).exists()]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} missing in {HERE}; run `make demo`")
    try:
        server = make_server(args.host, args.port)
    except (OSError, OverflowError) as e:  # address in use, no such host, not an address of this machine
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(2) from None
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(f"dog-emotion demo at http://{host}:{server.server_port}/ (listening on {args.host}; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
