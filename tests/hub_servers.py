"""Local stand-ins for what ``megengine.hub`` talks to, for the end-to-end hub tests.

* :func:`make_certificate`: a self-signed certificate for ``IP:127.0.0.1`` (``cryptography``).
* :func:`build_hub_repository`: a bare git repository holding the *working tree* of a checkout
  (committed in a temporary clone, so uncommitted work is what gets tested) plus test branches.
* :class:`HubServer`: HTTPS on 127.0.0.1 answering GitHub's archive URL
  ``GET /OWNER/REPO/archive/REF.zip`` (what ``GitHTTPSFetcher`` downloads) with ``git archive``
  of the bare repository, and serving weight files under ``/weights/``. MegEngine's client only
  builds ``https://HOST/...`` URLs, i.e. port 443. When 127.0.0.1:443 cannot be bound (taken, or
  forced with ``MEGZOO_TEST_HUB_TRANSPORT=proxy``), the server listens on a free port and an HTTP
  ``CONNECT`` proxy (``HTTPS_PROXY``) tunnels ``127.0.0.1:443`` to it; TLS stays end to end.
* :func:`git_ssh_env`: git configuration (in the environment) that turns the SSH fetcher's
  ``git@127.0.0.1:OWNER/REPO.git`` into a ``file://`` URL of the local bare repository.

Everything binds 127.0.0.1 only; ``HubServer.stop()`` shuts the threads down.
"""
import datetime
import ipaddress
import os
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

HOST = "127.0.0.1"
HTTPS_PORT = 443  # the only port megengine.hub's HTTPS fetcher uses
TRANSPORT_ENV = "MEGZOO_TEST_HUB_TRANSPORT"  # "auto" (default), "direct" (443 only) or "proxy"

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "megzoo hub tests", "GIT_AUTHOR_EMAIL": "hub-tests@localhost",
    "GIT_COMMITTER_NAME": "megzoo hub tests", "GIT_COMMITTER_EMAIL": "hub-tests@localhost",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
}


# ---------------------------------------------------------------------------------------------
# certificate


def make_certificate(directory: Path) -> Tuple[Path, Path]:
    """Write ``cert.pem`` (self-signed, subjectAltName IP:127.0.0.1, valid +-1 day) and ``key.pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "megzoo hub tests 127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# ---------------------------------------------------------------------------------------------
# git


def git(*args, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> str:
    """Run git with a fixed identity and no system config; return its stripped stdout."""
    full_env = {**os.environ, **_GIT_ENV, **(env or {})}
    result = subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", *args],
                            cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


@dataclass
class HubRepository:
    """A bare repository ``<root>/OWNER/REPO.git`` built by :func:`build_hub_repository`.

    Branches: ``master`` (the hub's default) and ``dev`` are the snapshot plus a commit adding a
    ``HUB_MARKER`` file saying the branch name; ``missing-dep`` is the snapshot with an extra,
    nonexistent module in hubconf's ``dependencies``. ``snapshot`` (also branch ``snapshot``) is the
    commit holding the working tree as it is, without ``HUB_MARKER``.
    """

    root: Path  #: directory holding OWNER/REPO.git (the insteadOf base of the SSH tests)
    bare: Path
    owner: str
    name: str
    snapshot: str  #: sha of the working-tree commit
    branches: Dict[str, str] = field(default_factory=dict)  #: branch -> sha
    missing_module: str = "megzoo_hubtest_no_such_module"

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.name}"


def build_hub_repository(source: Path, workdir: Path, owner: str = "hubtest", name: str = "megzoo") -> HubRepository:
    """Clone ``source``'s committed HEAD into ``workdir``, replace its files by ``source``'s working
    tree (tracked and untracked, not ignored: ``git ls-files -co --exclude-standard``), commit, add
    the test branches and publish everything as a bare repository. ``source`` is only read."""
    clone = workdir / "snapshot-clone"
    git("clone", "-q", "--no-hardlinks", str(source), str(clone))
    listed = git("ls-files", "-z", "-co", "--exclude-standard", cwd=source)
    for entry in clone.iterdir():
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for rel in sorted(set(filter(None, listed.split("\0")))):
        src = source / rel
        if src.is_file():  # skip files deleted from the working tree but still in the index
            dst = clone / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    git("checkout", "-q", "-B", "snapshot", cwd=clone)
    git("add", "-A", cwd=clone)
    git("commit", "-q", "--allow-empty", "-m", "hub tests: working tree snapshot", cwd=clone)
    snapshot = git("rev-parse", "HEAD", cwd=clone)

    repo = HubRepository(root=workdir / "repos", bare=workdir / "repos" / owner / f"{name}.git",
                         owner=owner, name=name, snapshot=snapshot)
    for branch in ("master", "dev"):
        git("checkout", "-q", "-B", branch, snapshot, cwd=clone)
        (clone / "HUB_MARKER").write_text(branch + "\n")
        git("add", "HUB_MARKER", cwd=clone)
        git("commit", "-q", "-m", f"hub tests: mark branch {branch}", cwd=clone)

    git("checkout", "-q", "-B", "missing-dep", snapshot, cwd=clone)
    hubconf = clone / "hubconf.py"
    text = hubconf.read_text()
    patched = text.replace("dependencies = [", f'dependencies = ["{repo.missing_module}", ', 1)
    if patched == text:
        raise RuntimeError("hubconf.py has no 'dependencies = [' line to patch")
    hubconf.write_text(patched)
    git("commit", "-q", "-am", "hub tests: depend on a module that does not exist", cwd=clone)

    repo.bare.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "-q", "--bare", "--no-hardlinks", str(clone), str(repo.bare))
    for branch in ("snapshot", "master", "dev", "missing-dep"):  # a bare clone keeps every branch
        repo.branches[branch] = git("rev-parse", f"refs/heads/{branch}", cwd=repo.bare)
    git("symbolic-ref", "HEAD", "refs/heads/master", cwd=repo.bare)
    shutil.rmtree(clone)
    return repo


def git_ssh_env(repo: HubRepository, host: str = HOST) -> Dict[str, str]:
    """Environment making ``git clone git@HOST:OWNER/REPO.git`` clone ``file://<root>/OWNER/REPO.git``."""
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"url.file://{repo.root}/.insteadOf",
        "GIT_CONFIG_VALUE_0": f"git@{host}:",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
    }


# ---------------------------------------------------------------------------------------------
# HTTPS server


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    user_agent: str
    status: int


class _Handler(BaseHTTPRequestHandler):
    server: "_TLSServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep pytest output clean; requests are recorded instead
        pass

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def _answer(self, send_body: bool):
        path = unquote(urlsplit(self.path).path)
        status, body, ctype = self.server.hub.respond(path)
        self.server.hub.record(Request(self.command, path, self.headers.get("User-Agent", ""), status))
        start, end = 0, len(body)
        range_header = self.headers.get("Range", "")
        if status == 200 and range_header.startswith("bytes=") and "," not in range_header:
            first, _, last = range_header[len("bytes="):].partition("-")
            if first.isdigit() and int(first) < len(body):
                start, end = int(first), (min(int(last) + 1, len(body)) if last.isdigit() else len(body))
                status = 206
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if send_body:
            self.wfile.write(body[start:end])


class _TLSServer(ThreadingHTTPServer):
    """TLS is set up in the worker thread, so a client stalling its handshake blocks nobody else."""

    daemon_threads = True

    def __init__(self, address, context: ssl.SSLContext, hub: "HubServer"):
        self.context, self.hub = context, hub
        super().__init__(address, _Handler)

    def finish_request(self, request, client_address):
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class _ConnectProxy(socketserver.ThreadingTCPServer):
    """A minimal HTTP proxy that only tunnels ``CONNECT 127.0.0.1:443`` (and the backend's own
    port) to the HTTPS backend; anything else is refused."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, backend_port: int):
        self.backend_port = backend_port
        self.connects: List[str] = []
        super().__init__((HOST, 0), _ConnectHandler)


class _ConnectHandler(socketserver.BaseRequestHandler):
    server: _ConnectProxy

    def handle(self):
        client = self.request
        client.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        target = parts[1] if len(parts) == 3 and parts[0] == "CONNECT" else ""
        host, _, port = target.rpartition(":")
        self.server.connects.append(target)
        allowed = {str(HTTPS_PORT), str(self.server.backend_port)}
        if host not in (HOST, "localhost") or port not in allowed:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        try:
            upstream = socket.create_connection((HOST, self.server.backend_port), timeout=30)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            self._pipe(client, upstream)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket):
        peers = {a: b, b: a}
        while True:
            readable, _, _ = select.select(list(peers), [], [], 30)
            if not readable:
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                peers[sock].sendall(data)


class HubServer:
    """The fake git host + weight mirror. ``repos`` maps ``"OWNER/REPO"`` to a bare repository;
    ``files`` maps a URL path (``/weights/...``) to its bytes (may be changed while running).

    ``transport``: ``"direct"`` listens on 127.0.0.1:443; ``"proxy"`` listens on a free port behind
    a CONNECT proxy; ``"auto"`` (default, or ``$MEGZOO_TEST_HUB_TRANSPORT``) tries 443, then the proxy.
    After :meth:`start`, :attr:`transport` says which one is in use and :meth:`client_env` gives
    the environment a client process needs (CA bundle, proxy variables).
    """

    def __init__(self, cert: Path, key: Path, repos: Dict[str, Path], files: Optional[Dict[str, bytes]] = None,
                 transport: Optional[str] = None):
        self.cert, self.key = Path(cert), Path(key)
        self.repos = dict(repos)
        self.files: Dict[str, bytes] = dict(files or {})
        self.transport = transport or os.environ.get(TRANSPORT_ENV, "auto") or "auto"
        if self.transport not in ("auto", "direct", "proxy"):
            raise ValueError(f"{TRANSPORT_ENV} must be auto, direct or proxy, got {self.transport!r}")
        self.requests: List[Request] = []
        self._lock = threading.Lock()
        self._httpd: Optional[_TLSServer] = None
        self._proxy: Optional[_ConnectProxy] = None
        self._threads: List[threading.Thread] = []

    # -- lifecycle --
    def start(self) -> "HubServer":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        if self.transport in ("auto", "direct"):
            try:
                self._httpd = _TLSServer((HOST, HTTPS_PORT), context, self)
                self.transport = "direct"
            except OSError:
                if self.transport == "direct":
                    raise
                self.transport = "proxy"
        if self.transport == "proxy":
            self._httpd = _TLSServer((HOST, 0), context, self)
            self._proxy = _ConnectProxy(self._httpd.server_address[1])
        for server in filter(None, (self._httpd, self._proxy)):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in filter(None, (self._proxy, self._httpd)):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what clients see --
    @property
    def backend_port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def proxy_connects(self) -> List[str]:
        return list(self._proxy.connects) if self._proxy else []

    def url(self, path: str = "/") -> str:
        """The URL a client uses (always port 443: directly or through the proxy)."""
        return f"https://{HOST}:{HTTPS_PORT}{path}"

    def client_env(self) -> Dict[str, Optional[str]]:
        """Variables to set (None: to remove) in a client's environment."""
        env: Dict[str, Optional[str]] = {"REQUESTS_CA_BUNDLE": str(self.cert), "CURL_CA_BUNDLE": str(self.cert),
                                         "SSL_CERT_FILE": str(self.cert)}
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
            env[name] = env[name.lower()] = None
        if self._proxy is not None:
            proxy = f"http://{HOST}:{self._proxy.server_address[1]}"
            env["HTTPS_PROXY"] = env["https_proxy"] = proxy
        return env

    # -- request handling --
    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def paths(self, method: str = "GET") -> List[str]:
        with self._lock:
            return [r.path for r in self.requests if r.method == method]

    def respond(self, path: str) -> Tuple[int, bytes, str]:
        if path in self.files:
            return 200, self.files[path], "application/octet-stream"
        parts = path.strip("/").split("/")
        if len(parts) >= 4 and parts[2] == "archive" and path.endswith(".zip"):
            slug = f"{parts[0]}/{parts[1]}"
            ref = "/".join(parts[3:])[: -len(".zip")]
            bare = self.repos.get(slug)
            if bare is not None and ref and not ref.startswith("-"):
                prefix = f"{parts[1]}-{ref.replace('/', '-')}/"  # GitHub's top directory: REPO-REF/
                result = subprocess.run(["git", "archive", "--format=zip", f"--prefix={prefix}", ref, "--"],
                                        cwd=bare, capture_output=True, timeout=120)
                if result.returncode == 0:
                    return 200, result.stdout, "application/zip"
        return 404, b"not found\n", "text/plain"
