"""The weight cache against another user (issue 30, items 1 and 2): planted links and files, folder
ownership and modes, and what ``megzoo verify`` checks against; the same rule for the algorithm cache
(kernel choices, layout and backend records), the folders above a cache, lock files, and a bad file
that cannot be removed.

"Another user" is uid 65534 (nobody): the tests, run as root, chown what the attacker plants to it,
and run a victim step as nobody in a forked child where one is needed (the interpreter under /root
cannot be exec'ed by nobody).
"""
import hashlib
import json
import os
import random
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from http_server import FileServer
from megzoo.weights.cache import read_sidecar, sidecar_path, verify_cache, weights_dir
from megzoo.weights.download import download_file, fetch
from megzoo.weights.errors import WeightsError

NOBODY = 65534
DATA = random.Random(1).randbytes(50_000)
SHA = hashlib.sha256(DATA).hexdigest()
PATH = "/w/a.bin"
NAME = "resnet18_naiveaug_70312_78a63ca6.pkl"  # what `megzoo download resnet18` fetches
FAST = dict(progress=False, timeout=(2, 2), retries=0, backoff=0.01)
PRIVATE_FIX = "or set MEGZOO_HOME to a folder of your own (e.g. ~/.cache/megzoo)"
TEMPORARY = ("; megzoo writes a temporary file only into a new file of its own, never through a link or into "
             f"another user's file: remove it, {PRIVATE_FIX}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chowning files to another user needs root")


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "home"))
    for name in ("MEGZOO_OFFLINE", "MEGZOO_MIRRORS", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def server():
    with FileServer({PATH: DATA, "/mge/models/weights/" + NAME: DATA}) as srv:
        yield srv


@pytest.fixture
def victim(tmp_path):
    """A file of the user's that a planted link points at."""
    path = tmp_path / "victim" / "notes.txt"
    path.parent.mkdir()
    path.write_bytes(b"precious notes\n")
    return path


def sticky_folder(path: Path) -> Path:
    """A world-writable folder with the sticky bit, owned by root, like /tmp."""
    path.mkdir(parents=True)
    os.chmod(path, 0o1777)
    return path


def planted_folder(path: Path, mode: int) -> Path:
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, mode)
    return path


def planted_link(link: Path, target: Path, owner: int = NOBODY) -> Path:
    os.symlink(target, link)
    os.lchown(link, owner, owner)
    return link


def planted_weights(path: Path, data: bytes, owner: int = NOBODY) -> None:
    """A weight file with a sidecar matching it, as an attacker would plant them."""
    path.write_bytes(data)
    sidecar_path(path).write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    for p in (path, sidecar_path(path)):
        os.chown(p, owner, owner)


def attempt(call):
    """The exception ``call()`` raises, or None."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the tests assert on it
        return exc
    return None


# -- item 1: a planted .part link ------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("source", ["http", "file"])
def test_planted_part_link_in_a_shared_home_never_overwrites_the_victims_file(server, tmp_path, victim,
                                                                             monkeypatch, source):
    home = sticky_folder(tmp_path / "shared")  # a world-writable MEGZOO_HOME
    monkeypatch.setenv("MEGZOO_HOME", str(home))
    weights = planted_folder(home / "weights", 0o777)
    part = planted_link(weights / (NAME + ".part"), victim)
    mirror = tmp_path / "mirror" / NAME
    mirror.parent.mkdir()
    mirror.write_bytes(DATA)
    url = server.url(PATH) if source == "http" else mirror.as_uri()
    error = attempt(lambda: fetch([url], NAME, **FAST))
    assert victim.read_bytes() == b"precious notes\n"
    assert part.is_symlink() and not (weights / NAME).exists()
    assert type(error).__name__ == "UnsafeCacheError"
    assert str(error) == (f"unsafe weight cache: {weights} is owned by uid 65534 (nobody), not by you (uid 0) or "
                          f"root, so another user could change what megzoo loads; remove it if you may, {PRIVATE_FIX}")


@needs_root
def test_megzoo_download_refuses_a_shared_home_with_a_planted_weights_folder(server, tmp_path, victim, monkeypatch,
                                                                           capsys):
    from megzoo.cli import main

    home = sticky_folder(tmp_path / "shared")
    monkeypatch.setenv("MEGZOO_HOME", str(home))
    monkeypatch.setenv("MEGZOO_MIRRORS", f"https://data.megengine.org.cn/={server.url('/mge/')}")
    weights = planted_folder(home / "weights", 0o777)
    planted_link(weights / (NAME + ".part"), victim)
    code = main(["download", "resnet18", "--no-progress"])
    assert victim.read_bytes() == b"precious notes\n"
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"megzoo download: error: unsafe weight cache: {weights} is owned by uid 65534 (nobody)")
    assert err.count("\n") == 1 and server.requests == []


@needs_root
@pytest.mark.parametrize("owner", [NOBODY, 0])
def test_a_link_at_the_part_path_is_never_written_through(server, tmp_path, victim, owner):
    folder = sticky_folder(tmp_path / "tmp")  # a download into a /tmp-like folder
    part = planted_link(folder / "a.bin.part", victim, owner)
    error = attempt(lambda: download_file(server.url(PATH), folder / "a.bin", **FAST))
    assert victim.read_bytes() == b"precious notes\n"
    assert part.is_symlink() and not (folder / "a.bin").exists()
    assert type(error).__name__ == "UnsafeCacheError"
    assert str(error) == f"unsafe weight cache: {part} is a symbolic link (to {victim}){TEMPORARY}"


@needs_root
def test_another_users_part_file_is_not_resumed_into_the_cache(server, tmp_path):
    folder = sticky_folder(tmp_path / "tmp")
    part = folder / "a.bin.part"
    part.write_bytes(b"evil" + DATA[4:20_000])  # resumed, it would make a file of the attacker's start
    os.chown(part, NOBODY, NOBODY)
    error = attempt(lambda: download_file(server.url(PATH), folder / "a.bin", **FAST))
    assert str(error) == f"unsafe weight cache: {part} is owned by uid 65534 (nobody), not by you (uid 0){TEMPORARY}"
    assert not (folder / "a.bin").exists() and part.stat().st_uid == NOBODY


@needs_root
def test_a_link_at_the_lock_path_is_refused(server, tmp_path, victim):
    weights_dir().mkdir(parents=True)
    lock = planted_link(weights_dir() / "a.bin.lock", victim, owner=0)
    error = attempt(lambda: fetch([server.url(PATH)], "a.bin", **FAST))
    assert victim.read_bytes() == b"precious notes\n"
    assert str(error) == f"unsafe weight cache: {lock} is a symbolic link (to {victim}){TEMPORARY}"


# -- item 2: a cache others can write is not trusted --------------------------------------------------

@needs_root
def test_planted_weights_in_another_users_folder_are_not_used(server, tmp_path):
    weights_dir().parent.mkdir()
    weights = planted_folder(weights_dir(), 0o755)  # owned by nobody, writable only by nobody
    planted_weights(weights / "a.bin", b"attacker's weights")
    error = attempt(lambda: fetch([server.url(PATH)], "a.bin", **FAST))
    assert type(error).__name__ == "UnsafeCacheError"
    assert str(error).startswith(f"unsafe weight cache: {weights} is owned by uid 65534 (nobody)")
    assert server.requests == []
    assert (weights / "a.bin").read_bytes() == b"attacker's weights"  # not ours to delete either


@needs_root
def test_world_writable_weights_folder_is_refused_by_fetch_and_verify(server, capsys):
    from megzoo.cli import main

    weights = weights_dir()
    weights.mkdir(parents=True)
    os.chmod(weights, 0o777)
    planted_weights(weights / "a.bin", b"attacker's weights")
    expected = (f"unsafe weight cache: {weights} is writable by others (mode 777), so another user could change "
                f"what megzoo loads; run `chmod go-w` on it, {PRIVATE_FIX}")
    assert str(attempt(lambda: fetch([server.url(PATH)], "a.bin", **FAST))) == expected
    assert main(["verify"]) == 2
    assert capsys.readouterr().err == f"megzoo verify: error: {expected}\n"
    os.chmod(weights, 0o755)  # fixed as the message says: now the planted file itself is refused
    error = attempt(lambda: fetch([server.url(PATH)], "a.bin", **FAST))
    assert str(error).startswith(f"unsafe weight cache: {weights / 'a.bin'} is owned by uid 65534 (nobody)")
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"PROBLEM   {weights / 'a.bin'}  (unsafe weight cache: {weights / 'a.bin'} is owned by")
    assert out.endswith("0 files checked, 0 bad; 1 with a problem (kept, see above)\n")


@needs_root
def test_group_write_is_refused_unless_the_group_is_the_users_own(server):
    weights = weights_dir()
    weights.mkdir(parents=True)
    os.chmod(weights, 0o775)  # group root: root's own group, no other members
    assert fetch([server.url(PATH)], "a.bin", **FAST).read_bytes() == DATA
    os.chown(weights, 0, NOBODY)
    assert str(attempt(lambda: fetch([server.url(PATH)], "a.bin", **FAST))).startswith(
        f"unsafe weight cache: {weights} is writable by group 65534 (mode 775)")


@needs_root
def test_links_in_the_cache_must_be_the_users_and_lead_to_a_trusted_file(server, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.bin").write_bytes(DATA)
    weights = weights_dir()
    weights.mkdir(parents=True)
    own = planted_link(weights / "a.bin", elsewhere / "mine.bin", owner=0)
    assert fetch([server.url(PATH)], "a.bin", sha256=SHA, **FAST) == own  # the user's link to the user's file
    assert [(r.path, r.ok) for r in verify_cache()] == [(own, True)]
    own.unlink()
    theirs = planted_link(weights / "a.bin", elsewhere / "mine.bin", owner=NOBODY)
    assert str(attempt(lambda: fetch([server.url(PATH)], "a.bin", **FAST))) == (
        f"unsafe weight cache: {theirs} is a symbolic link owned by uid 65534 (nobody), so another user could change "
        f"what megzoo loads; remove it, {PRIVATE_FIX}")
    theirs.unlink()
    os.chown(elsewhere / "mine.bin", NOBODY, NOBODY)
    own = planted_link(weights / "a.bin", elsewhere / "mine.bin", owner=0)
    assert str(attempt(lambda: fetch([server.url(PATH)], "a.bin", **FAST))).startswith(
        f"unsafe weight cache: {own} links to {elsewhere / 'mine.bin'}, which is owned by uid 65534 (nobody)")
    assert server.requests == []


def test_verify_checks_against_the_published_hash_not_the_sidecar(capsys):
    from megzoo.cli import main

    weights = weights_dir()
    weights.mkdir(parents=True)
    planted = weights / "resnet18-f37072fd.pth"  # torchvision publishes the sha256 prefix f37072fd
    planted_weights(planted, b"not torchvision's weights", owner=os.geteuid())
    assert main(["verify"]) == 1
    digest = hashlib.sha256(b"not torchvision's weights").hexdigest()
    assert capsys.readouterr().out == (f"BAD       {planted}  (its sha256 is {digest}, expected f37072fd; removed)\n"
                                       "1 files checked, 1 bad\n")
    assert not planted.exists() and not sidecar_path(planted).exists()


def test_verify_reports_files_it_cannot_check_as_unchecked(capsys):
    from megzoo.cli import main

    weights = weights_dir()
    weights.mkdir(parents=True)
    (weights / "placed.pkl").write_bytes(DATA)
    assert main(["verify"]) == 0
    assert capsys.readouterr().out == (
        f"unchecked {weights / 'placed.pkl'}  (no published or recorded sha256 to check it against)\n"
        "0 files checked, 0 bad; 1 unchecked (no published or recorded sha256)\n")
    assert (weights / "placed.pkl").read_bytes() == DATA


def test_verify_keeps_a_valid_file_whose_sidecar_is_garbled(capsys):
    from megzoo.cli import main

    weights = weights_dir()
    weights.mkdir(parents=True)
    path = weights / "mine.pkl"
    path.write_bytes(DATA)
    sidecar_path(path).write_text("garbage\n")
    assert main(["verify"]) == 1
    out = capsys.readouterr().out
    assert out == (f"PROBLEM   {path}  ({path} could not be checked: its sha256 sidecar is unreadable "
                   f"({sidecar_path(path)} holds no sha256 (expected 64 hex digits, found 'garbage\\n')). The file "
                   f"was kept: delete {sidecar_path(path)} to record the file's sha256 anew, or delete both to "
                   "download it again)\n0 files checked, 0 bad; 1 with a problem (kept, see above)\n")
    assert path.read_bytes() == DATA
    sidecar_path(path).unlink()  # the fix the message gives
    assert fetch(["http://127.0.0.1:9/never"], "mine.pkl", **FAST) == path and read_sidecar(path) == SHA


# -- what keeps working -------------------------------------------------------------------------------

@needs_root
def test_a_sticky_shared_home_with_the_users_own_weights_folder_works_under_umask_002(server, tmp_path, monkeypatch):
    home = sticky_folder(tmp_path / "shared")
    monkeypatch.setenv("MEGZOO_HOME", str(home))
    planted_folder(home / "someone-elses", 0o777)  # others' entries beside ours do not matter
    old = os.umask(0o002)
    try:
        path = fetch([server.url(PATH)], "sub/a.bin", **FAST)
    finally:
        os.umask(old)
    assert path == home / "weights" / "sub" / "a.bin" and path.read_bytes() == DATA
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (home / "weights", path.parent, path, sidecar_path(path))}
    assert modes == {"weights": "0o755", "sub": "0o755", "a.bin": "0o644", "a.bin.sha256": "0o644"}


def run_as_nobody(call):
    """``call()`` in a forked child running as uid/gid 65534; its JSON-able result, or ``{"error": ...}``."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = {"result": call()}
        except BaseException as exc:  # noqa: BLE001
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def roots_home(monkeypatch):
    """An offline MEGZOO_HOME of root's, 0o755 under /tmp (where nobody can reach it), removed after."""
    home = Path(tempfile.mkdtemp(prefix="megzoo-ro-", dir="/tmp"))
    os.chmod(home, 0o755)
    monkeypatch.setenv("MEGZOO_HOME", str(home))
    monkeypatch.setenv("MEGZOO_OFFLINE", "1")
    yield home
    shutil.rmtree(home)


@needs_root
def test_a_read_only_cache_of_roots_still_serves_another_user(roots_home):
    cached = fetch([Path(__file__).as_uri()], "a.bin", progress=False)  # filled by root, recorded
    tv = weights_dir() / "t-0123abcd.pth"
    tv.write_bytes(b"x")
    served = run_as_nobody(lambda: [
        str(fetch(["https://example.invalid/a.bin"], "a.bin", progress=False)),
        str(fetch(["https://example.invalid/t.pth"], tv.name, sha256=hashlib.sha256(b"x").hexdigest()[:8],
                  progress=False)),
    ])
    assert served == {"result": [str(cached), str(tv)]}
    assert sorted(p.name for p in weights_dir().iterdir()) == ["a.bin", "a.bin.sha256", "t-0123abcd.pth"]


def test_unsupported_url_schemes_say_so():
    from megzoo.weights import resolve_weights

    expected = ("ftp://example.org/w.pkl: unsupported URL scheme ftp://; megzoo fetches http://, https://, file:// "
                "URLs and local paths (download the file yourself and pass its path)")
    with pytest.raises(WeightsError) as info:
        resolve_weights("resnet18", "ftp://example.org/w.pkl")
    assert str(info.value) == expected
    with pytest.raises(WeightsError) as info:
        fetch(["ftp://example.org/w.pkl"], "w.pkl", **FAST)
    assert str(info.value) == expected


# -- the per-machine records and kernel caches in $MEGZOO_HOME/algo_cache ----------------------------------

ALGO_REFUSAL = ("unsafe algorithm cache: {} is owned by uid 65534 (nobody), not by you (uid 0) or root, so another "
                f"user could change what megzoo loads; remove it if you may, {PRIVATE_FIX}")


def plant_record(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    os.chown(path, NOBODY, NOBODY)
    return path


@needs_root
@pytest.mark.parametrize("what", ["backend choice", "layout probe", "kernel cache"])
def test_an_algo_cache_folder_planted_in_a_shared_home_is_refused(tmp_path, monkeypatch, what):
    from megzoo.inference import backends, layouts

    home = sticky_folder(tmp_path / "shared")
    monkeypatch.setenv("MEGZOO_HOME", str(home))
    for name in ("MEGZOO_PROBE_DIR", "MEGZOO_BACKEND", "MEGZOO_LAYOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backends, "_chosen", {})
    algo = planted_folder(home / "algo_cache", 0o777)
    if what == "backend choice":  # the planted choice would be used without measuring
        plant_record(backends.backend_record_path(), {"backend": "lite"})
        call = backends.best_backend
    elif what == "layout probe":  # a planted verdict would run kernels that crash this machine
        plant_record(layouts.probe_record_path(), {"verdicts": {"nchw88": {"ok": True, "reason": "planted"}}})

        def call():
            return layouts.layout_verdict("nchw88")
    else:  # MegEngine would read (and write) its kernel choices in the planted folder
        import megengine.module as M

        from megzoo.inference import CompiledModel

        def call():
            return CompiledModel(M.Conv2d(3, 4, 3), input_shape=(1, 3, 8, 8), layout="nchw")
    error = attempt(call)
    assert type(error).__name__ == "UnsafeCacheError"
    assert str(error) == ALGO_REFUSAL.format(algo)
    assert not list(algo.glob("*.cache")) and not list(algo.glob("*.lock"))


@needs_root
def test_the_backend_choice_lock_is_never_written_through_a_link(tmp_path, monkeypatch, victim):
    from megzoo.inference import backends

    monkeypatch.delenv("MEGZOO_BACKEND", raising=False)
    monkeypatch.setenv("MEGZOO_PROBE_DIR", str(tmp_path / "probe"))
    monkeypatch.setattr(backends, "_chosen", {})
    measured = {"backend": "lite", "images_per_s": {"lite": 1.0}, "errors": {}}
    monkeypatch.setattr(backends, "measure_backends", lambda precision: measured)
    record = backends.backend_record_path()
    record.parent.mkdir()
    lock = planted_link(Path(f"{record}.lock"), victim, owner=0)
    error = attempt(backends.best_backend)
    assert victim.read_bytes() == b"precious notes\n"
    assert str(error) == (f"unsafe algorithm cache: {lock} is a symbolic link (to {victim}); megzoo writes a temporary "
                          f"file only into a new file of its own, never through a link or into another user's file: "
                          f"remove it, {PRIVATE_FIX}")
    assert not record.exists()


# -- the folders above the cache -------------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_folder_above_megzoo_home_that_others_can_write_is_refused_unless_sticky(server, tmp_path, monkeypatch,
                                                                                 mode, capsys):
    from megzoo.cli import main

    above = tmp_path / "above"
    above.mkdir()
    os.chown(above, 0, NOBODY)  # group nobody: not root's own group
    os.chmod(above, mode)
    home = above / "deeper" / "home"
    monkeypatch.setenv("MEGZOO_HOME", str(home))
    error = attempt(lambda: fetch([server.url(PATH)], "a.bin", **FAST))
    if mode & stat.S_ISVTX:  # like /tmp: others cannot rename what is ours in it
        assert error is None and (home / "weights" / "a.bin").read_bytes() == DATA
        assert oct(stat.S_IMODE((above / "deeper").stat().st_mode)) == "0o755"  # made by megzoo, not 777
        return
    who = "others" if mode & 0o002 else "group 65534"
    expected = (f"unsafe weight cache: {above} is writable by {who} (mode {mode:o}), so another user could change "
                f"what megzoo loads; run `chmod go-w` on it, {PRIVATE_FIX}")
    assert str(error) == expected
    assert not (above / "deeper").exists() and server.requests == []
    (above / "deeper" / "home" / "weights").mkdir(parents=True)
    assert main(["verify"]) == 2
    assert capsys.readouterr().err == f"megzoo verify: error: {expected}\n"


@needs_root
def test_an_ordinary_home_of_the_user_passes(monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="megzoo-home-", dir="/tmp"))  # nobody can reach it (not under /root)
    try:
        os.chmod(base, 0o755)
        user_home = base / "home" / "nobody"
        user_home.mkdir(parents=True)
        os.chown(user_home, NOBODY, NOBODY)
        os.chmod(user_home, 0o750)
        source = base / "a.bin"
        source.write_bytes(DATA)
        monkeypatch.setenv("HOME", str(user_home))
        monkeypatch.delenv("MEGZOO_HOME")
        served = run_as_nobody(lambda: str(fetch([source.as_uri()], "a.bin", progress=False)))
        assert served == {"result": str(user_home / ".cache" / "megzoo" / "weights" / "a.bin")}
    finally:
        shutil.rmtree(base)


# -- lock files --------------------------------------------------------------------------------------------

@needs_root
def test_another_users_lock_file_is_refused_not_waited_on(server, tmp_path):
    folder = sticky_folder(tmp_path / "tmp")
    lock = folder / "a.bin.lock"
    lock.write_bytes(b"")
    os.chown(lock, NOBODY, NOBODY)
    os.chmod(lock, 0o666)  # anyone could open it, and its owner could hold it forever
    error = attempt(lambda: download_file(server.url(PATH), folder / "a.bin", **FAST))
    assert str(error) == f"unsafe weight cache: {lock} is owned by uid 65534 (nobody), not by you (uid 0){TEMPORARY}"
    assert not (folder / "a.bin").exists() and lock.stat().st_uid == NOBODY and server.requests == []


# -- a bad file that cannot be removed ---------------------------------------------------------------------

@needs_root
def test_a_bad_file_in_a_read_only_cache_is_kept_and_said_so(roots_home):
    source = roots_home / "source.bin"
    source.write_bytes(DATA)
    bad = fetch([source.as_uri()], "a-bad.bin", progress=False)
    good = fetch([source.as_uri()], "b-good.bin", progress=False)
    bad.write_bytes(b"bit rot")  # by root: nobody may not remove it
    digest = hashlib.sha256(b"bit rot").hexdigest()
    why = f"its sha256 is {digest}, but a-bad.bin.sha256 recorded {SHA} on download"
    kept = ("the file was kept, as it cannot be removed here (Permission denied): remove it with the rights of "
            "the cache's owner, or set MEGZOO_HOME to a cache of your own")
    seen = run_as_nobody(lambda: [
        str(attempt(lambda: fetch([source.as_uri()], bad.name, progress=False))),
        [(r.path.name, r.status, r.reason) for r in verify_cache()],
    ])
    assert seen == {"result": [
        f"{bad} failed its check ({why}); {kept}",
        [["a-bad.bin", "problem", f"{bad} failed its check ({why}); {kept}"],
         ["b-good.bin", "ok", f"sha256 {SHA[:16]}... matches b-good.bin.sha256"]],
    ]}
    assert bad.read_bytes() == b"bit rot" and good.read_bytes() == DATA
