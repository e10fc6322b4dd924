"""Serve the browser demo (this folder) on HOST:PORT with the cross-origin isolation headers that
WebAssembly threads need. `make demo` runs it; HOST=0.0.0.0 serves a phone on the same network
(a file pick works over plain HTTP; the camera needs HTTPS or localhost).

    python web/serve.py [--host 127.0.0.1] [--port 8000]
"""
from __future__ import annotations

import argparse
import functools
import http.server
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".onnx": "application/octet-stream"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):  # quiet: one line per request is noise in a demo
        pass


def make_server(host: str, port: int, root: Path = HERE) -> http.server.ThreadingHTTPServer:
    return http.server.ThreadingHTTPServer((host, port), functools.partial(Handler, directory=str(root)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for other devices (default: %(default)s)")
    ap.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    args = ap.parse_args(argv)
    missing = [p for p in ("models/dog_emotion.onnx", "models/dog_emotion.meta.json", "node_modules/onnxruntime-web")
               if not (HERE / p).exists()]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} missing in {HERE}; run `make demo`")
    server = make_server(args.host, args.port)
    print(f"dog-emotion demo at http://{'localhost' if args.host in ('127.0.0.1', '0.0.0.0') else args.host}:{args.port}/ "
          f"(listening on {args.host}; Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
