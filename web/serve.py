"""Serve the browser demo (this folder) on HOST:PORT with the cross-origin isolation headers that
WebAssembly threads need. `make demo` runs it; HOST=0.0.0.0 serves a phone on the same network
(a file pick works over plain HTTP; the camera needs HTTPS or localhost).

    python web/serve.py [--host 127.0.0.1] [--port 8000]

Exposed to a network, it serves only what the page loads (the page, the three model files,
onnxruntime-web's scripts and WebAssembly), never a folder listing or any other file, with at most
MAX_WORKERS requests at once on sockets that time out, so idle connections cannot pile up threads.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import os
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE_FILES = {"index.html", "app.js", "style.css",
              "models/dog_emotion.onnx", "models/dog_emotion.int8.onnx", "models/dog_emotion.meta.json"}
RUNTIME_DIR = "node_modules/onnxruntime-web/dist/"   # the page asks it for ort-wasm-*.{mjs,wasm}
RUNTIME_SUFFIXES = (".js", ".mjs", ".wasm")
MAX_WORKERS = 16
TIMEOUT_S = 10.0


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
    return path if (rel in PAGE_FILES or runtime) and path.is_file() else None


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".onnx": "application/octet-stream"}
    timeout = TIMEOUT_S  # on the socket: a client that stops sending frees its worker

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
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        self.pool.submit(self.handle_in_worker, request, client_address)

    def handle_in_worker(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception as e:  # noqa: BLE001 - a client that goes away mid-reply: one line, the server goes on
            print(f"warning: request from {client_address[0]}: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            self.shutdown_request(request)

    def server_close(self):
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_server(host: str, port: int, root: Path = HERE, timeout: float = TIMEOUT_S,
                workers: int = MAX_WORKERS) -> BoundedServer:
    handler = type("DemoHandler", (Handler,), {"timeout": timeout})
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
    missing = [p for p in ("models/dog_emotion.onnx", "models/dog_emotion.meta.json", "node_modules/onnxruntime-web")
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
