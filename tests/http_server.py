"""A real HTTP(S) file server on 127.0.0.1 for tests, with switchable failure modes.

    with FileServer({"/w/a.pkl": data}) as server:
        server.set_mode("/w/a.pkl", Mode.status(500), times=2)  # the next 2 requests get a 500
        download_file(server.url("/w/a.pkl"), dest)
        assert len(server.requests_for("/w/a.pkl")) == 3

It is a ``http.server.ThreadingHTTPServer`` in a daemon thread, listening on ``host:port``
(port 0 picks a free port), speaking HTTP/1.1, optionally over TLS (``ssl_context``; see
:func:`self_signed_cert` for a certificate). It serves ``files`` (a dict ``path -> bytes``; the query
string is ignored), honours ``Range: bytes=A-B`` / ``A-`` / ``-N`` with 206 (and 416 past the end),
and records every request (path, ``Range`` header, status, bytes sent) in :attr:`FileServer.requests`.

A :class:`Mode` says how to answer: serve correctly, cut the body after N bytes with the full
length announced, omit Content-Length, stall, answer an error status, serve wrong bytes, ignore
``Range``, or trickle the body slowly. Modes apply per path, permanently or to the next K requests.
"""
import re
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ["FileServer", "Mode", "Request", "self_signed_cert", "server_context"]


@dataclass(frozen=True)
class Mode:
    """How to answer a request. Fields combine, e.g. ``Mode(send_length=False, truncate_after=100)``."""

    status: Optional[int] = None  #: answer this error status (short text body) instead of the file
    truncate_after: Optional[int] = None  #: close the connection after this many body bytes
    send_length: bool = True  #: False: no Content-Length; the end of the body is the connection closing
    stall: float = 0.0  #: seconds to go silent (ended early by ``release_stalls()`` or ``stop()``)
    stall_after: int = 0  #: body bytes sent before stalling; 0: stall before the status line
    corrupt: bool = False  #: serve wrong bytes (every byte XOR 0xFF, same length)
    honour_range: bool = True  #: False: answer 200 with the whole file even to a Range request
    chunk_size: int = 16384  #: bytes per write
    chunk_delay: float = 0.0  #: seconds between writes (a slow transfer)

    @staticmethod
    def ok(chunk_delay: float = 0.0, chunk_size: int = 16384) -> "Mode":
        """Serve correctly (optionally slowly)."""
        return Mode(chunk_delay=chunk_delay, chunk_size=chunk_size)

    @staticmethod
    def truncate(after: int) -> "Mode":
        """Announce the full Content-Length, send ``after`` bytes of the body, close the connection."""
        return Mode(truncate_after=after)

    @staticmethod
    def no_length() -> "Mode":
        """Send no Content-Length; close the connection after the body."""
        return Mode(send_length=False)

    @staticmethod
    def stalled(seconds: float, after: int = 0) -> "Mode":
        """Go silent for ``seconds`` before the response (``after=0``) or after ``after`` body bytes."""
        return Mode(stall=seconds, stall_after=after)

    @staticmethod
    def error(code: int) -> "Mode":
        """Answer ``code`` (404, 403, 500, 503...) instead of the file."""
        return Mode(status=code)

    @staticmethod
    def wrong_bytes() -> "Mode":
        """Serve bytes other than the file's (same length)."""
        return Mode(corrupt=True)

    @staticmethod
    def ignore_range() -> "Mode":
        """Answer every request with 200 and the whole file, whatever its Range header."""
        return Mode(honour_range=False)


@dataclass
class Request:
    """One request as the server saw it; the response fields fill in while it is answered."""

    method: str
    path: str
    range: Optional[str]  #: the Range header as sent, e.g. "bytes=100-"
    headers: Dict[str, str]
    mode: Mode
    status: Optional[int] = None
    bytes_sent: int = 0  #: body bytes written
    body_length: Optional[int] = None  #: body bytes the response was meant to carry
    complete: bool = False  #: the whole intended body was written
    response_headers: Dict[str, str] = field(default_factory=dict)

    @property
    def full_transfer(self) -> bool:
        """A 200 carrying the whole file, sent to the end."""
        return self.status == 200 and self.complete and self.method == "GET"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, owner: "FileServer"):
        self.owner = owner
        super().__init__(address, handler)

    def get_request(self):
        sock, address = self.socket.accept()
        if self.owner.ssl_context is not None:  # handshake later, in the handler thread
            sock = self.owner.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address):  # quiet: clients hang up on purpose in tests
        pass


_FLIP = bytes(range(255, -1, -1))  # byte b -> 255 - b
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # drop idle keep-alive connections
    server: _Server

    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def send_header(self, keyword, value):
        record = getattr(self, "_record", None)
        if record is not None:
            record.response_headers[keyword] = value
        super().send_header(keyword, value)

    def log_message(self, format, *args):  # noqa: A002  (no access log on stderr)
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        mode = owner._next_mode(path)
        record = Request(self.command, path, self.headers.get("Range"), dict(self.headers.items()), mode)
        self._record = record
        owner._begin(record)
        try:
            self._respond(record, owner, path, mode, head)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
            self.close_connection = True
        finally:
            owner._end()

    def _respond(self, record: Request, owner: "FileServer", path: str, mode: Mode, head: bool) -> None:
        if mode.stall and not mode.stall_after:
            owner._pause(mode.stall)
        data = owner.files.get(path)
        if data is None or mode.status is not None:
            code = 404 if data is None else mode.status
            self._send_text(record, code, f"{code} for {path}\n".encode(), head)
            return
        if mode.corrupt:
            data = data.translate(_FLIP)
        status, start, end = 200, 0, len(data)
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if record.range and mode.honour_range:
            parsed = self._parse_range(record.range, len(data))
            if parsed is None:
                headers["Content-Range"] = f"bytes */{len(data)}"
                self._send_text(record, 416, b"range not satisfiable\n", head, headers)
                return
            status, (start, end) = 206, parsed
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        body = data[start:end]
        record.status, record.body_length = status, len(body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if mode.send_length:
            self.send_header("Content-Length", str(len(body)))
        if not mode.send_length or mode.truncate_after is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if head:
            record.complete = True
            return
        limit = len(body) if mode.truncate_after is None else min(mode.truncate_after, len(body))
        stall_at = mode.stall_after if mode.stall else None
        sent = 0
        while sent < limit:
            step = min(mode.chunk_size, limit - sent)
            if stall_at is not None and sent < stall_at:
                step = min(step, stall_at - sent)
            self.wfile.write(body[sent:sent + step])
            self.wfile.flush()
            sent += step
            record.bytes_sent = sent
            if stall_at is not None and sent == stall_at:
                owner._pause(mode.stall)
            if mode.chunk_delay and sent < limit:
                owner._stop.wait(mode.chunk_delay)
        record.complete = sent == len(body)

    @staticmethod
    def _parse_range(header: str, length: int) -> Optional[Tuple[int, int]]:
        """(start, end) with end exclusive; None when unsatisfiable. Malformed ranges serve everything."""
        match = _RANGE.match(header.strip())
        if not match or match.groups() == ("", ""):
            return 0, length
        first, last = match.groups()
        if first == "":  # the last N bytes
            return max(0, length - int(last)), length
        start = int(first)
        end = length if last == "" else min(int(last) + 1, length)
        if start >= length or start >= end:
            return None
        return start, end

    def _send_text(self, record: Request, code: int, text: bytes, head: bool, headers: Optional[dict] = None) -> None:
        record.status, record.body_length = code, len(text)
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if not head:
            self.wfile.write(text)
            record.bytes_sent = len(text)
        record.complete = True


@dataclass
class _PathModes:
    queued: List[List] = field(default_factory=list)  # [mode, remaining uses]
    default: Optional[Mode] = None


class FileServer:
    """Serve ``files`` over HTTP(S) from a background thread; a context manager (``start``/``stop``).

    ``host``/``port`` choose the address (port 0: a free port; see :attr:`port` once started);
    ``ssl_context`` (a server-side ``ssl.SSLContext``) makes it HTTPS.
    """

    def __init__(self, files: Optional[Dict[str, bytes]] = None, *, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: Optional[ssl.SSLContext] = None, default_mode: Mode = Mode()):
        self.files: Dict[str, bytes] = dict(files or {})
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.default_mode = default_mode  #: mode of paths with nothing set
        self.requests: List[Request] = []  #: every request, in arrival order
        self._modes: Dict[str, _PathModes] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._stalls_released = 0  # generation count of release_stalls()
        self._stalling = 0  # handlers in a stall now
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle
    def start(self) -> "FileServer":
        self._stop.clear()
        self._server = _Server((self.host, self.port), _Handler, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FileServer:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.release_stalls()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- content and behaviour
    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """Full URL of ``path`` (which starts with "/")."""
        return self.base_url + path

    def add(self, path: str, data: bytes, mode: Optional[Mode] = None) -> str:
        """Serve ``data`` at ``path`` (optionally with a permanent ``mode``); returns its URL."""
        self.files[path] = data
        if mode is not None:
            self.set_mode(path, mode)
        return self.url(path)

    def set_mode(self, path: str, mode: Mode, times: Optional[int] = None) -> None:
        """Answer requests for ``path`` in ``mode``: the next ``times`` requests (queued after
        earlier ones), or every request from now on when ``times`` is None."""
        with self._lock:
            modes = self._modes.setdefault(path, _PathModes())
            if times is None:
                modes.queued.clear()
                modes.default = mode
            elif times > 0:
                modes.queued.append([mode, times])

    def reset(self) -> None:
        """Forget modes and recorded requests (files stay)."""
        with self._lock:
            self._modes.clear()
            self.requests.clear()

    def wait_stalled(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until ``count`` responses are stalled (see :attr:`Mode.stall`); True if they are."""
        with self._wake:
            return self._wake.wait_for(lambda: self._stalling >= count, timeout)

    def release_stalls(self) -> None:
        """End every stall in progress now (later requests in a stalling mode stall again)."""
        with self._wake:
            self._stalls_released += 1
            self._wake.notify_all()

    # -- inspection
    def requests_for(self, path: str) -> List[Request]:
        return [r for r in self.requests if r.path == path]

    def ranges(self, path: str) -> List[Optional[str]]:
        """The Range header of each GET of ``path``, in order (None: no Range)."""
        return [r.range for r in self.requests_for(path) if r.method == "GET"]

    def full_transfers(self, path: str) -> int:
        """How many times the whole file was sent with a 200."""
        return sum(r.full_transfer for r in self.requests_for(path))

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no response is being written (a client may return before the server's
        bookkeeping ends); True if idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    # -- handler side
    def _next_mode(self, path: str) -> Mode:
        with self._lock:
            modes = self._modes.get(path)
            if modes is None:
                return self.default_mode
            if modes.queued:
                entry = modes.queued[0]
                entry[1] -= 1
                if entry[1] <= 0:
                    modes.queued.pop(0)
                return entry[0]
            return modes.default or self.default_mode

    def _pause(self, seconds: float) -> None:
        with self._wake:
            generation = self._stalls_released
            self._stalling += 1
            self._wake.notify_all()
            try:
                self._wake.wait_for(lambda: self._stop.is_set() or self._stalls_released != generation, seconds)
            finally:
                self._stalling -= 1

    def _begin(self, record: Request) -> None:
        with self._lock:
            self.requests.append(record)
            self._active += 1

    def _end(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()


def self_signed_cert(directory, host: str = "127.0.0.1", openssl: Optional[str] = None) -> Tuple[Path, Path]:
    """Write a self-signed certificate for ``host`` (an IP or DNS name) into ``directory`` with the
    ``openssl`` command; returns ``(cert_file, key_file)``. Trust it on the client side with
    ``REQUESTS_CA_BUNDLE=cert_file``; serve it with :func:`server_context`."""
    openssl = openssl or shutil.which("openssl")
    if not openssl:
        raise RuntimeError("the openssl command is needed to make a test certificate")
    directory = Path(directory)
    cert, key = directory / "cert.pem", directory / "key.pem"
    kind = "IP" if re.fullmatch(r"[\d.]+|[0-9a-fA-F:]+", host) else "DNS"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={host}", "-addext", f"subjectAltName={kind}:{host}"],
                   check=True, capture_output=True)
    return cert, key


def server_context(cert_file, key_file) -> ssl.SSLContext:
    """A server-side TLS context presenting ``cert_file``/``key_file`` (for ``FileServer(ssl_context=...)``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_file), str(key_file))
    return context
