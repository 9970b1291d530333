"""A small HTTP file server on 127.0.0.1 for download tests (no internet needed).

Serves in-memory files with HTTP ``Range`` support, records every request, and can misbehave on purpose:
drop the connection after N bytes (once), ignore ``Range`` headers, send no ``Content-Length``, or answer an
error status. It runs in a daemon
thread and shuts itself down after ``lifetime`` seconds even if a test forgets to stop it.
"""
from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalFileServer:
    def __init__(self, lifetime: float = 60.0):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut (first request only)
        self.ignore_range: set[str] = set()
        self.status: dict[str, int] = {}  # path -> forced HTTP error status
        self.redirects: dict[str, str] = {}  # path -> path it redirects to (302), as Hugging Face / GitHub do
        self.no_length: set[str] = set()  # paths answered without Content-Length (the body ends when the connection closes)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.bytes_sent = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                range_header = self.headers.get("Range")
                with server._lock:
                    server.requests.append((path, range_header))
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.url(server.redirects[path]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path in server.status:
                    self.send_error(server.status[path])
                    return
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                partial = bool(match) and path not in server.ignore_range
                if partial:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                self.send_response(206 if partial else 200)
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                if path in server.no_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.drop_after.pop(path, None)
                if cut is not None:
                    sent = body[: max(0, cut - start)]
                    with server._lock:  # counted before sending: the client may be done before this thread resumes
                        server.bytes_sent += len(sent)
                    self.wfile.write(sent)
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                with server._lock:  # counted before sending, as above
                    server.bytes_sent += len(body)
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. refused the size)
                    with server._lock:
                        server.bytes_sent -= len(body)
                    self.close_connection = True
                    return

        class QuietServer(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # clients hanging up are part of the tests
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "LocalFileServer":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
