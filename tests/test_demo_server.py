"""The demo server as a network sees it: only the page's files, no listings, bounded threads, clean
errors. No browser needed (test_web_demo.py drives the page itself)."""
import http.client
import socket
import threading
import time

import pytest

from conftest import load_serve

serve = load_serve()
RUNTIME = "node_modules/onnxruntime-web/dist"


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "web"
    for rel in ("index.html", "app.js", "style.css", "serve.py", "models/dog_emotion.app.onnx", "models/dog_emotion.onnx",
                f"{RUNTIME}/ort.wasm.min.js", f"{RUNTIME}/ort-wasm-simd-threaded.wasm",
                "node_modules/onnxruntime-web/package.json", f"{RUNTIME}/sub/x.js"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / "models" / "dog_emotion.app.int8.onnx").symlink_to(root / "serve.py")   # a link inside web/: never followed
    srv = serve.make_server("127.0.0.1", 0, root, timeout=0.5, workers=4, header_deadline=1.0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(srv, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=5)
    conn.putrequest("GET", path, skip_accept_encoding=True)  # putrequest sends the path as given, %00 and all
    conn.endheaders()
    resp = conn.getresponse()
    status, body = resp.status, resp.read()
    conn.close()
    return status, body


@pytest.mark.parametrize("path, status", [
    ("/", 200), ("/index.html", 200), ("/app.js?v=2", 200), ("/models/dog_emotion.app.onnx", 200),
    (f"/{RUNTIME}/ort.wasm.min.js", 200), (f"/{RUNTIME}/ort-wasm-simd-threaded.wasm", 200),
    ("/serve.py", 404), ("/serve.py%00.html", 404), ("/models/", 404), ("/node_modules/", 404),
    (f"/{RUNTIME}/", 404), ("/models/dog_emotion.onnx", 404), ("/node_modules/onnxruntime-web/package.json", 404),
    (f"/{RUNTIME}/sub/x.js", 404), ("/models/dog_emotion.app.int8.onnx", 404), ("/../web/index.html", 404), ("/%2e%2e/web/index.html", 404),
    ("/models%2fdog_emotion.app.onnx%ff", 404), ("//etc/passwd", 404),
])
def test_only_the_pages_files_are_served(server, capfd, path, status):
    code, body = get(server, path)
    assert code == status, (path, body[:200])
    if status == 200:
        assert body.decode() in path or path == "/" and body == b"index.html"
    else:
        assert b"not part of the demo" in body
    assert "Traceback" not in capfd.readouterr().err


def test_idle_connections_cannot_hold_the_server(server):
    """16 idle sockets fill the 4 workers and most of the queue (4 x 5 = 20 places); they time out
    (0.5 s each) and the next real request is served. Past the 20 places a connection is closed at
    once: a flood is dropped at the door rather than queued without bound."""
    base = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(16)]
    time.sleep(0.2)
    assert threading.active_count() <= base + 4, "one thread per connection"
    t0 = time.monotonic()
    assert get(server, "/")[0] == 200, "idle sockets time out and free their workers"
    assert time.monotonic() - t0 < 10
    flood = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(24)]
    for s in flood:
        s.settimeout(5)
    closed = sum(1 for s in flood if s.recv(1) == b"")   # every one ends: the queue's by timeout, the rest at once
    assert closed == len(flood)
    assert threading.active_count() <= base + 4
    for s in idle + flood:
        s.close()


def test_bad_port_and_host_are_one_line_errors(tmp_path, monkeypatch, capsys):
    for port in ("70000", "-1", "http"):
        with pytest.raises(SystemExit) as e:
            serve.main(["--port", port])
        assert e.value.code == 2 and "--port" in capsys.readouterr().err
    for rel in ("models/dog_emotion.app.onnx", "models/dog_emotion.meta.json", "node_modules/onnxruntime-web/x"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    monkeypatch.setattr(serve, "HERE", tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for host, port in (("no-such-host.invalid", "8000"), ("127.0.0.1", str(taken.getsockname()[1]))):
            with pytest.raises(SystemExit) as e:
                serve.main(["--host", host, "--port", port])
            err = capsys.readouterr().err
            assert e.value.code == 2 and f"error: cannot listen on {host}:{port}: " in err and "Traceback" not in err


def test_clients_that_trickle_their_request_cannot_hold_the_workers(server):
    """16 clients sending a byte every 0.3 s (the per-read timeout is 0.5 s, so it never fires) hold
    the 4 workers only until the 1 s header deadline; past the queue, connections are closed at once."""
    stop = threading.Event()

    def trickle():
        try:
            with socket.create_connection(("127.0.0.1", server.server_port)) as s:
                while not stop.is_set():
                    s.sendall(b"G")
                    time.sleep(0.3)
        except OSError:
            pass   # hung up on by the server: what the deadline is for

    clients = [threading.Thread(target=trickle, daemon=True) for _ in range(16)]
    for c in clients:
        c.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert get(server, "/")[0] == 200
    assert time.monotonic() - t0 < 8, "a trickling client is cut off at the header deadline"
    stop.set()
