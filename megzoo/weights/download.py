"""Fetching weight files: resumable, verified, atomic and locked downloads; mirrors; offline mode.

``fetch(urls, filename, sha256=..., size=...)`` returns the verified cached file
``weights_dir() / filename``, downloading it from the first source that works when it is not
cached (or fails its check). ``download_file(url, dest)`` is the single-file step underneath.

A download streams into ``<dest>.part`` next to ``dest``. A transient failure (connection error,
timeout, HTTP 408/429/5xx, a body shorter than announced) is retried with exponential backoff,
resuming the ``.part`` file with an HTTP ``Range`` request; a server that ignores ``Range`` (200)
or cannot satisfy it (416) makes the download start again from byte 0. 404, 403 and other client
errors fail at once. The finished file's length is checked (Content-Length or Content-Range total,
and ``size`` when known) and its sha256 too when known (a full digest, or a prefix of at least 8
hex digits as in torchvision file names), then it is renamed into place with ``os.replace``: a
half file never appears under ``dest``. Its sha256 is recorded in ``<dest>.sha256`` so that later
uses are checked even when no hash was published. ``<dest>.lock`` (an ``flock``, removed on
release) keeps processes from downloading the same file at once: the second one waits, then uses
the finished file. After a final failure the ``.part`` file is removed; only an interruption
(Ctrl-C) keeps it, so the next attempt resumes it. A write error (full disk, read-only folder)
raises OSError naming the file and leaves no partial file.

The cache's folders and files are checked before use (:mod:`.cache_safety`): one another user
could have written is refused with UnsafeCacheError; the ``.part`` and ``.lock`` files are never
opened through a link.

Sources may be ``http://`` or ``https://`` URLs, ``file://`` URLs or plain local paths; local
files are copied and verified like downloads. Other schemes (``ftp://``...) are refused.

Environment variables:

``MEGZOO_HOME``
    Cache root (default ``~/.cache/megzoo``); weight files live in ``$MEGZOO_HOME/weights/``.
``MEGZOO_OFFLINE``
    Any value other than empty, ``0``, ``false``, ``no`` or ``off``: never touch the network. A
    file missing from the cache raises :class:`OfflineError` saying where to place it and where to
    fetch it on another machine (local and ``file://`` sources are still copied).
``MEGZOO_MIRRORS``
    URL prefix rewrites: ``PREFIX=REPLACEMENT`` pairs separated by ``;`` or newlines (the first
    ``=`` of a pair separates the two; blank pairs are skipped). A source URL starting with
    ``PREFIX`` is fetched from ``REPLACEMENT`` followed by the rest of the URL instead (no fallback
    to the original); the longest matching prefix wins. ``REPLACEMENT`` may be an ``http(s)://``
    or ``file://`` URL or a local directory path ending in ``/``. Example::

        MEGZOO_MIRRORS="https://data.megengine.org.cn/=https://my.mirror/mge/;https://download.pytorch.org/models/=file:///srv/torch/"

    makes ``https://download.pytorch.org/models/resnet50-0676ba61.pth`` come from
    ``/srv/torch/resnet50-0676ba61.pth``.
"""
import http.client
import logging
import os
import re
import stat
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlparse
from urllib.request import url2pathname

import requests
import urllib3
from tqdm import tqdm

from .cache import (cache_folders, file_sha256, normalize_sha256, sidecar_path, verify_file, weights_dir,
                    write_sidecar)
from .cache_safety import (cache_lock, check_temporary, check_trusted, discard_temporary, open_temporary,
                           prepare_folders)
from .errors import ChecksumError, DownloadError, OfflineError, WeightsError

__all__ = ["download_file", "fetch", "is_offline", "mirror_rules", "apply_mirrors", "check_url_scheme",
           "SUPPORTED_SCHEMES"]

logger = logging.getLogger("megzoo.weights")

PathLike = Union[str, os.PathLike]
Timeout = Union[float, Tuple[float, float]]

_CHUNK = 1 << 16  # bytes per read
_MAX_BACKOFF = 60.0  # seconds
_RETRY_STATUS = {408, 429}  # besides every 5xx
_FALSE_WORDS = {"", "0", "false", "no", "off"}

#: the URL schemes a weight source may have (besides a plain local path)
SUPPORTED_SCHEMES = ("http", "https", "file")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

_sleep = time.sleep  # patched by tests

#: read failures of a response body, all worth a retry
_BODY_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                ConnectionError, TimeoutError)


# -- configuration ---------------------------------------------------------------------------------

def is_offline() -> bool:
    """True when ``MEGZOO_OFFLINE`` is set to anything but empty/0/false/no/off."""
    return os.environ.get("MEGZOO_OFFLINE", "").strip().lower() not in _FALSE_WORDS


def mirror_rules(text: Optional[str] = None) -> List[Tuple[str, str]]:
    """``(prefix, replacement)`` pairs from ``text`` (default ``$MEGZOO_MIRRORS``), longest prefix first."""
    text = os.environ.get("MEGZOO_MIRRORS", "") if text is None else text
    rules = []
    for entry in re.split(r"[;\n]", text):
        entry = entry.strip()
        if not entry:
            continue
        prefix, sep, replacement = (part.strip() for part in entry.partition("="))
        if not sep or not prefix or not replacement:
            raise WeightsError(f"MEGZOO_MIRRORS entry {entry!r} is not PREFIX=REPLACEMENT; write e.g. "
                               "MEGZOO_MIRRORS='https://data.megengine.org.cn/=https://my.mirror/mge/' "
                               "(pairs separated by ';' or newlines)")
        rules.append((prefix, replacement))
    return sorted(rules, key=lambda rule: -len(rule[0]))


def apply_mirrors(url: str, rules: Optional[Sequence[Tuple[str, str]]] = None) -> str:
    """``url`` rewritten by the longest matching mirror prefix (see module docstring), else unchanged."""
    for prefix, replacement in mirror_rules() if rules is None else rules:
        if url.startswith(prefix):
            return replacement + url[len(prefix):]
    return url


def check_url_scheme(source: str) -> Optional[str]:
    """The lower-case scheme of the URL ``source`` (None for a plain path); DownloadError for a
    scheme megzoo cannot fetch (``ftp://``, ``s3://``...), naming the supported ones."""
    match = _SCHEME.match(source)
    if not match:
        return None
    scheme = match.group(1).lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise DownloadError(f"{source}: unsupported URL scheme {scheme}://; megzoo fetches "
                            f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)} URLs and local paths "
                            "(download the file yourself and pass its path)", source)
    return scheme


def _is_remote(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _local_path(source: str) -> Path:
    """The path of a ``file://`` URL or plain path."""
    if check_url_scheme(source) == "file":
        parsed = urlparse(source)
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"{source}: file:// URLs must name a local file (file:///path), "
                                f"not one on host {parsed.netloc!r}", source)
        return Path(url2pathname(parsed.path))
    return Path(source).expanduser()


# -- public API -------------------------------------------------------------------------------------

def download_file(url: str, dest: PathLike, *, sha256: Optional[str] = None, size: Optional[int] = None,
                  progress: bool = True, timeout: Timeout = (10, 60), retries: int = 3, backoff: float = 1.0,
                  overwrite: bool = False) -> Path:
    """Download ``url`` (or copy a ``file://`` URL / local path) to ``dest``; returns ``dest``.

    Atomic (through ``<dest>.part`` and ``os.replace``), resumable, locked against other processes,
    length-checked and verified against ``sha256`` (hex digest or >= 8-digit prefix) and ``size``
    (bytes) when given; the file's sha256 is recorded in ``<dest>.sha256``. ``dest``'s folder must
    be the user's (or root's) and writable by nobody else unless sticky, like ``/tmp``
    (UnsafeCacheError otherwise, see :mod:`.cache_safety`). ``timeout`` is
    ``(connect, read)`` in seconds; ``retries`` is how many times a transient failure is retried
    (the count starts over whenever a retry got further into the file); the n-th retry waits
    ``backoff * 2**(n-1)`` seconds. An existing ``dest`` that verifies against ``sha256`` or its
    sidecar is kept unless ``overwrite``. Raises DownloadError, ChecksumError, or OfflineError
    for a remote ``url`` under ``MEGZOO_OFFLINE``.
    """
    dest = Path(dest)
    sha256 = normalize_sha256(sha256)
    if _is_remote(url) and is_offline():
        raise OfflineError(f"MEGZOO_OFFLINE is set: not downloading {url}; fetch it on a machine with network "
                           f"and place it at {dest}", dest, [url])
    if not prepare_folders([(dest.parent, True)]):
        dest.parent.mkdir(parents=True, exist_ok=True)  # raises why it cannot be made, naming it
        prepare_folders([(dest.parent, True)])
    with cache_lock(dest):
        present = check_trusted(dest)
        if not overwrite and present and (sha256 or os.path.lexists(sidecar_path(dest))):
            try:
                verify_file(dest, sha256, size=size)
                logger.info("%s is already there and verified", dest)
                return dest
            except ChecksumError as exc:
                if exc.kept:
                    raise  # failed but cannot be removed: nor could a new file replace it
                # removed (or its sidecar is unreadable); fetch it again
        _download(url, dest, sha256, size, progress, timeout, retries, backoff)
    return dest


def fetch(urls: Union[str, Sequence[str]], filename: str, *, sha256: Optional[str] = None,
          size: Optional[int] = None, progress: bool = True, cache_dir: Optional[PathLike] = None,
          name: Optional[str] = None, timeout: Timeout = (10, 60), retries: int = 3, backoff: float = 1.0) -> Path:
    """The verified cached file ``(cache_dir or weights_dir()) / filename``, fetched if need be.

    A cached file is checked against ``sha256`` (hex digest or >= 8-digit prefix), else its
    recorded sidecar (a cached file with neither gets its sha256 recorded now); one that fails is
    removed and fetched again. The cache's folders and the file must be the user's (or root's) and
    writable by nobody else, else UnsafeCacheError says which path and how to fix it. Otherwise
    ``urls`` are tried in order, after ``MEGZOO_MIRRORS`` rewriting, and the first that works wins.
    Under ``MEGZOO_OFFLINE`` only local sources are used and a missing file raises OfflineError.
    ``name`` (e.g. ``"resnet50.tv2_in1k"``) is only used in messages; the other options are those
    of :func:`download_file`.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError(f"no URL given for {filename}")
    directory = Path(cache_dir) if cache_dir is not None else weights_dir()
    relative = _checked_filename(filename)
    dest = directory / relative
    sha256 = normalize_sha256(sha256)
    sources = list(dict.fromkeys(apply_mirrors(url) for url in urls))
    cache_folders(cache_dir, str(PurePosixPath(relative).parent))  # a read-only cache may lack them
    with cache_lock(dest):
        failed_check = None
        if check_trusted(dest):
            try:
                verify_file(dest, sha256, size=size)
                return dest
            except ChecksumError as exc:
                if exc.kept:
                    raise  # failed but cannot be removed: nor could a new file replace it
                failed_check = exc
        if is_offline():
            sources = [s for s in sources if not _is_remote(s)]
            if not sources:
                raise _offline_error(dest, urls, name, failed_check)
        errors = []
        for i, source in enumerate(sources):
            try:
                _download(source, dest, sha256, size, progress, timeout, retries, backoff)
                return dest
            except (DownloadError, ChecksumError) as exc:
                errors.append((source, exc))
                if i + 1 < len(sources):
                    logger.warning("%s; trying the next source", exc)
        if is_offline():
            raise _offline_error(dest, urls, name, failed_check) from errors[-1][1]
        raise _all_failed(dest, errors)


# -- errors -------------------------------------------------------------------------------------------

def _checked_filename(filename: str) -> str:
    parts = PurePosixPath(filename.replace("\\", "/")).parts
    if not parts or filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise ValueError(f"cache file name {filename!r} must be a relative path inside the cache")
    return "/".join(parts)


def _offline_error(dest: Path, urls: Sequence[str], name: Optional[str], failed: Optional[ChecksumError]):
    lines = []
    for url in urls:
        mirrored = apply_mirrors(url)
        lines.append(url if mirrored == url else f"{url} (mirror: {mirrored})")
    if failed:
        what = "could not be checked and was kept" if dest.exists() else "failed its check and was removed"
        why = f"the cached file {what} ({failed.reason})"
    else:
        why = "it is not cached"
    return OfflineError(
        f"{dest.name}: {why}, and MEGZOO_OFFLINE is set, so it is not downloaded. Place the file at {dest} "
        f"(on a machine with network, fetch it from {' or '.join(lines)}), or pre-fetch it there with "
        f"`megzoo download {name or 'NAME'} --to DIR`, copy DIR here and set MEGZOO_HOME to it.", dest, urls)


def _all_failed(dest: Path, errors: List[Tuple[str, Exception]]) -> WeightsError:
    if len(errors) == 1:
        return errors[0][1]
    listing = "\n".join(f"  {source}: {exc}" for source, exc in errors)
    message = (f"could not fetch {dest.name} from any of its {len(errors)} sources:\n{listing}\n"
               f"Check the network and proxy settings, set MEGZOO_MIRRORS to a reachable mirror, "
               f"or place the file at {dest} yourself.")
    if all(isinstance(exc, ChecksumError) for _, exc in errors):
        return ChecksumError(message, dest)
    return DownloadError(message, errors[0][0], dest)


# -- the download itself (lock held) -------------------------------------------------------------------

class _Transient(Exception):
    """A failure worth retrying, resuming the .part file."""


class _Restart(Exception):
    """The .part file cannot be resumed: start again from byte 0."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _progress_bar(dest: Path, progress: bool) -> tqdm:
    stderr = sys.stderr
    on = progress and stderr is not None and hasattr(stderr, "isatty") and stderr.isatty()
    return tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, file=stderr,
                disable=not on)


def _download(source: str, dest: Path, sha256: Optional[str], size: Optional[int], progress: bool,
              timeout: Timeout, retries: int, backoff: float) -> None:
    part = _part_path(dest)
    logger.info("fetching %s from %s", dest, source)
    try:
        with _progress_bar(dest, progress) as bar:
            if _is_remote(source):
                _HttpDownload(source, dest, part, sha256, size, timeout, bar).run(retries, backoff)
            else:
                _copy_local(source, dest, part, sha256, size, bar)
    except Exception:
        discard_temporary(part)  # a failed download leaves nothing behind (a planted link is not ours to remove)
        raise
    except BaseException:
        if part.is_file() and not part.is_symlink():
            logger.info("interrupted: kept %s (%d bytes); the next attempt resumes it", part, part.stat().st_size)
        raise


def _write_error(exc: OSError, path: Path) -> OSError:
    """``exc`` as an OSError naming ``path`` (a write error of a file object names no file)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def _write_all(fd: int, data: bytes, path: Path) -> None:
    """Write all of ``data`` to ``fd``; an OSError names ``path``."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise _write_error(exc, path) from exc


def _sync_close(fd: int, path: Path) -> None:
    """fsync and close ``fd``; an OSError names ``path``."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _write_error(exc, path) from exc
    finally:
        os.close(fd)


def _copy_local(source: str, dest: Path, part: Path, sha256: Optional[str], size: Optional[int], bar: tqdm) -> None:
    path = _local_path(source)
    if not path.is_file():
        raise DownloadError(f"{source}: no such file ({path}); check the path, or MEGZOO_MIRRORS if it was "
                            "rewritten to a local mirror", source, dest)
    bar.reset(total=path.stat().st_size)
    with open(path, "rb") as src:
        out = open_temporary(part, append=False)
        try:
            for block in iter(lambda: src.read(1 << 20), b""):
                _write_all(out, block, part)
                bar.update(len(block))
        finally:
            _sync_close(out, part)
    _install(part, dest, source, sha256, size, length_known=True)


def _install(part: Path, dest: Path, source: str, sha256: Optional[str], size: Optional[int],
             length_known: bool) -> None:
    """Check the finished ``part`` against ``size``/``sha256``, record its sha256, move it to ``dest``."""
    check_temporary(part)
    have = part.stat().st_size
    if size is not None and have != size:
        raise ChecksumError(f"{source} gave {have} bytes for {dest.name}, expected {size}; the download was "
                            "discarded. The source serves a different file: check the URL or MEGZOO_MIRRORS",
                            dest, str(size), str(have), reason=f"{have} bytes, expected {size}")
    digest = file_sha256(part)
    if sha256 is not None and not digest.startswith(sha256):
        raise ChecksumError(f"{source} gave a file whose sha256 is {digest}, expected {sha256}, for {dest.name}; "
                            "the download was discarded. The source serves a different or damaged file: "
                            "check the URL or MEGZOO_MIRRORS", dest, sha256, digest,
                            reason=f"sha256 {digest}, expected {sha256}")
    if sha256 is None and size is None and not length_known:
        logger.info("%s sent no length and no sha256 is known: %s could not be checked; recorded its sha256 %s",
                    source, dest.name, digest)
    try:
        write_sidecar(dest, digest)
    except OSError as exc:
        raise _write_error(exc, sidecar_path(dest)) from exc
    os.replace(part, dest)
    logger.info("saved %s (%d bytes, sha256 %s)", dest, have, digest)


class _HttpDownload:
    """One HTTP(S) download into ``part``, attempt by attempt."""

    def __init__(self, url: str, dest: Path, part: Path, sha256: Optional[str], size: Optional[int],
                 timeout: Timeout, bar: tqdm):
        self.url, self.dest, self.part, self.sha256, self.size = url, dest, part, sha256, size
        self.timeout, self.bar = timeout, bar
        self.resumed = False  # the .part holds bytes from an earlier attempt or run
        self.length_known = False

    def run(self, retries: int, backoff: float) -> None:
        failures = restarts = 0
        furthest = self._have()
        with requests.Session() as session:
            while True:
                try:
                    self._attempt(session)
                    _install(self.part, self.dest, self.url, self.sha256, self.size, self.length_known)
                    return
                except _Restart as exc:
                    restarts += 1
                    if restarts > retries + 1:
                        raise DownloadError(f"{self.url}: {exc}, again after {restarts - 1} fresh starts; "
                                            "giving up. Try another mirror (MEGZOO_MIRRORS)", self.url, self.dest)
                    logger.info("%s: %s; downloading from the start", self.url, exc)
                    discard_temporary(self.part)
                    self.resumed = False
                except ChecksumError as exc:
                    if not self.resumed:
                        raise
                    restarts += 1  # the bytes kept from before may be the bad ones
                    logger.info("%s after resuming; downloading from the start", exc.reason)
                    discard_temporary(self.part)
                    self.resumed = False
                    if restarts > retries + 1:
                        raise
                except _Transient as exc:
                    have = self._have()
                    if have > furthest:  # progress: the retry budget starts over
                        furthest, failures = have, 0
                    failures += 1
                    if failures > retries:
                        raise DownloadError(
                            f"downloading {self.url} failed after {failures} attempt(s): {exc}. Check the network "
                            f"and proxy settings, or set MEGZOO_MIRRORS to a reachable mirror (or MEGZOO_OFFLINE=1 "
                            f"and place the file at {self.dest})", self.url, self.dest) from exc
                    delay = min(backoff * 2 ** (failures - 1), _MAX_BACKOFF)
                    logger.info("%s: %s; retry %d/%d in %.1f s (%d bytes kept)",
                                self.url, exc, failures, retries, delay, have)
                    _sleep(delay)

    def _have(self) -> int:
        """Bytes in the .part file (0 when there is none, or something else than a file is there)."""
        try:
            st = os.lstat(self.part)
        except FileNotFoundError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def _attempt(self, session: requests.Session) -> None:
        offset = self._have()
        if self.size is not None and offset > self.size:
            raise _Restart(f"the partial file has {offset} bytes, more than the {self.size} expected")
        if offset and offset == self.size:
            self.resumed = self.length_known = True
            return  # complete already: only the checks remain
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = session.get(self.url, headers=headers, stream=True, timeout=self.timeout)
        except requests.exceptions.SSLError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise DownloadError(f"{self.url}: the server's TLS certificate is not trusted ({exc}); point "
                                    "REQUESTS_CA_BUNDLE at your CA certificates", self.url, self.dest) from exc
            raise _Transient(_describe(exc)) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(_describe(exc)) from exc
        except requests.RequestException as exc:
            raise DownloadError(f"{self.url}: {exc}", self.url, self.dest) from exc
        with response:
            try:
                total = self._check_response(response, offset)
            except _Complete:
                self.resumed = self.length_known = True
                return
            mode = "ab" if response.status_code == 206 else "wb"
            if mode == "wb":
                offset = 0
            self.resumed = mode == "ab"
            self.bar.reset(total=total)
            self.bar.update(offset)
            out = open_temporary(self.part, append=mode == "ab")
            error = None
            try:
                if os.fstat(out).st_size != offset:
                    raise _Restart(f"{self.part} changed while it was being resumed")
                chunks = _body(response)
                while True:
                    try:
                        chunk = next(chunks, None)
                    except _BODY_ERRORS as exc:
                        error = exc
                        break
                    if chunk is None:
                        break
                    _write_all(out, chunk, self.part)
                    self.bar.update(len(chunk))
            finally:
                _sync_close(out, self.part)
        have = self._have()
        got = f"{have} of {total if total is not None else 'an unknown number of'} bytes"
        if error is not None:
            what = "timed out" if _describe(error).startswith("timed out") else "broke"
            raise _Transient(f"the connection {what} after {got} ({type(error).__name__})") from error
        if total is not None and have < total:
            raise _Transient(f"the connection closed after {got}")
        if total is not None and have > total:
            raise _Restart(f"received {have} bytes, more than the {total} announced")

    def _check_response(self, response: requests.Response, offset: int) -> Optional[int]:
        """Raise for a status that ends this attempt; else the file's total length when announced."""
        status = response.status_code
        if status == 416 and offset:
            if _content_range(response.headers.get("Content-Range", ""))[2] == offset:
                raise _Complete()
            raise _Restart(f"the server cannot resume at byte {offset} (416)")
        if status in _RETRY_STATUS or status >= 500:
            raise _Transient(f"HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise DownloadError(f"{self.url} answered HTTP {status} {response.reason} (not retried); the URL may be "
                                "wrong or moved: check it, or set MEGZOO_MIRRORS to a mirror that has the file",
                                self.url, self.dest)
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if status == 206:
            start, _, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                raise _Restart(f"asked for bytes from {offset}, the server sent them from {start}")
        else:
            if offset:
                logger.info("%s ignored the Range request; downloading from the start", self.url)
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() and not encoded else None
        if self.size is not None and total is not None and total != self.size:
            raise ChecksumError(f"{self.url} announces {total} bytes for {self.dest.name}, expected {self.size}; "
                                "not downloaded. The URL serves a different file: check it or MEGZOO_MIRRORS",
                                self.dest, str(self.size), str(total), reason=f"{total} bytes, expected {self.size}")
        self.length_known = total is not None or self.size is not None
        return total if total is not None else self.size


class _Complete(Exception):
    """The server says the .part file already holds the whole file (416 with our length)."""


def _content_range(header: str) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """``(start, end, total)`` of a ``Content-Range`` header (``bytes 0-99/1000`` or ``bytes */1000``)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None, None
    start, end, total = (int(g) if g and g != "*" else None for g in match.groups())
    return start, end, total


def _body(response: requests.Response) -> Iterator[bytes]:
    """The response body in chunks, keeping every byte received before a connection breaks."""
    raw = response.raw
    if hasattr(raw, "read1"):  # urllib3 >= 2: unlike read(), never drops a partial chunk
        while True:
            chunk = raw.read1(_CHUNK, decode_content=True)
            if not chunk:
                return
            yield chunk
    else:
        yield from response.iter_content(_CHUNK)


def _describe(exc: BaseException) -> str:
    """A one-line account of a network failure."""
    text = str(exc)
    if isinstance(exc, requests.Timeout) or "timed out" in text.lower():
        return f"timed out ({text})"
    return f"{type(exc).__name__}: {text}"
