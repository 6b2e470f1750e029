"""hubconf.py through MegEngine's own hub client, end to end.

The repository served is a bare copy of this checkout's *working tree* (see
``hub_servers.build_hub_repository``), fetched by ``megengine.hub`` unmodified:

* HTTPS: ``GitHTTPSFetcher`` downloads ``https://127.0.0.1/OWNER/REPO/archive/REF.zip`` from a
  local TLS server (self-signed certificate trusted through ``REQUESTS_CA_BUNDLE``); when
  127.0.0.1:443 cannot be bound, through a CONNECT proxy (``HTTPS_PROXY``) to a free port;
* SSH: ``GitSSHFetcher`` runs ``git clone git@127.0.0.1:OWNER/REPO.git``, redirected to the bare
  repository by ``url.<base>.insteadOf`` given in the environment.

Every hub call runs in a fresh Python process (hub modules and megzoo's private package are
cached per process) with its own ``MGE_HOME`` (the hub cache key ignores host and protocol) and
``MEGZOO_HOME``. Set ``MEGZOO_TEST_HUB_TRANSPORT=proxy`` to run the whole file through the proxy.
"""
import ast
import hashlib
import inspect
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import megengine
import numpy as np
import pytest
from megengine.hub.tools import load_module

import megzoo

from hub_servers import HOST, HubServer, build_hub_repository, git_ssh_env, make_certificate

ROOT = Path(__file__).resolve().parents[1]
MODELS = megzoo.list_models()
RESULT_MARK = "@@HUBTEST@@"
PROTOCOLS = ["HTTPS", "SSH"]

_PRELUDE = f"""
import json, os, sys
globals().update(json.loads(os.environ["HUBTEST_PARAMS"]))
def emit(**values):
    print({RESULT_MARK!r} + json.dumps(values), flush=True)
"""


# ------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory):
    return build_hub_repository(ROOT, tmp_path_factory.mktemp("hub-repo"))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(certificate, hub_repo):
    cert, key = certificate
    with HubServer(cert, key, {hub_repo.slug: hub_repo.bare}) as running:
        yield running


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A random resnet18 state dict: the bytes of ``megengine.save`` and an .npz of the arrays."""
    rng = np.random.default_rng(2024)
    state = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in megzoo.resnet18().state_dict().items()}
    buffer = io.BytesIO()
    megengine.save(state, buffer)
    npz = tmp_path_factory.mktemp("weights") / "expected.npz"
    np.savez(npz, **state)
    weights = megzoo.get_weights("resnet18")
    prefix = "https://data.megengine.org.cn/"
    assert weights.urls[0].startswith(prefix), weights.urls
    return {"bytes": buffer.getvalue(), "npz": str(npz), "filename": weights.filename,
            "path": "/weights/" + weights.urls[0][len(prefix):], "mirror_prefix": prefix}


class Client:
    """Runs hub calls in fresh Python processes with a prepared environment."""

    def __init__(self, tmp_path: Path, repo, server=None, protocol: str = "HTTPS", extra_env=None):
        self.tmp_path, self.repo, self.server, self.protocol = tmp_path, repo, server, protocol
        self.mge_home = tmp_path / "mge_home"
        self.megzoo_home = tmp_path / "megzoo_home"
        self.workdir = tmp_path / "cwd"  # not the checkout: ./megzoo must not be importable by accident
        self.workdir.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MEGZOO_", "MGE_", "GIT_CONFIG", "PYTHON"))
               and k.lower() not in ("https_proxy", "http_proxy", "all_proxy", "no_proxy", "xdg_cache_home")}
        env.update(MGE_HOME=str(self.mge_home), MEGZOO_HOME=str(self.megzoo_home), PYTHONNOUSERSITE="1",
                   GIT_TERMINAL_PROMPT="0")
        if server is not None:
            for name, value in server.client_env().items():
                env.pop(name, None)
                if value is not None:
                    env[name] = value
            env["MEGZOO_MIRRORS"] = f"https://data.megengine.org.cn/={server.url('/weights/')}"
        if protocol == "SSH":
            env.update(git_ssh_env(repo))
        env.update(extra_env or {})
        self.env = env

    @property
    def hub_dir(self) -> Path:
        return self.mge_home / "hub"

    def run(self, code: str, env=None, **params) -> dict:
        params = {"HOST": HOST, "REPO": self.repo.slug, "PROTOCOL": self.protocol, "HUB_DIR": str(self.hub_dir),
                  **params}
        full_env = {**self.env, **(env or {}), "HUBTEST_PARAMS": json.dumps(params)}
        script = _PRELUDE + textwrap.dedent(code)
        proc = subprocess.run([sys.executable, "-c", script], cwd=self.workdir, env=full_env,
                              capture_output=True, text=True, timeout=240)
        results = [line[len(RESULT_MARK):] for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if proc.returncode or not results:
            pytest.fail(f"hub client process failed (exit {proc.returncode})\n--- script{script}\n"
                        f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-8000:]}", pytrace=False)
        merged = {}
        for result in results:  # every emit(...) of the script, later keys win
            merged.update(json.loads(result))
        return merged


def _archive_requests(server):
    return [p for p in server.paths() if "/archive/" in p]


def _under(path: str, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory.resolve())


def _signature(fn) -> str:
    """The signature as text; the return annotation by class name (each package copy has its own class)."""
    signature = inspect.signature(fn)
    returns = signature.return_annotation
    returns = getattr(returns, "__qualname__", returns)
    return f"{signature.replace(return_annotation=inspect.Signature.empty)} -> {returns}"


# --------------------------------------------------------------------- hubconf, without a client

@pytest.fixture(scope="module")
def hubconf():
    return load_module("hubconf.py", str(ROOT / "hubconf.py"))  # exactly how megengine.hub loads it


def test_hubconf_exposes_exactly_the_registered_models(hubconf):
    listed = [n for n in dir(hubconf) if not n.startswith("__") and callable(getattr(hubconf, n))]
    assert listed == MODELS  # the rule of megengine.hub.list: nothing else may leak
    assert len(MODELS) == 17
    public = [n for n in vars(hubconf) if not n.startswith("__")]
    assert sorted(public) == sorted(MODELS + ["dependencies"])


def test_hubconf_entries_are_the_builders_of_its_own_package_copy(hubconf):
    package = hubconf.__megzoo__
    assert package.__name__.startswith("_megzoo_hub_") and package is not megzoo
    assert Path(package.__file__) == ROOT / "megzoo" / "__init__.py"
    for name in MODELS:
        entry, builder = getattr(hubconf, name), getattr(megzoo, name)
        assert entry is getattr(package, name)
        assert entry.__module__.startswith(package.__name__ + ".models.")
        assert entry.__doc__ == builder.__doc__
        assert _signature(entry) == _signature(builder)
        assert inspect.signature(entry).parameters == inspect.signature(builder).parameters
    again = load_module("hubconf.py", str(ROOT / "hubconf.py"))
    assert again.__megzoo__ is package  # the same copy is imported once per process


# modules that come with the distribution of a listed dependency (MegEngine's wheel ships Lite)
_SHIPPED_WITH = {"megenginelite": "megengine"}


def _package_imports(package_dir: Path):
    """Top-level names of the modules the package imports, as ``(eager, lazy)``: eager imports run
    when their module is imported; lazy ones sit inside a function, under ``if TYPE_CHECKING`` or
    in a ``try`` that catches ImportError (optional features such as plotting). The command line
    (``megzoo/cli``, run as the installed ``megzoo`` program) is left out: hub entries never import it."""
    eager, lazy = set(), set()

    def visit(node, is_lazy):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            is_lazy = True
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            is_lazy = True
        if isinstance(node, ast.Import):
            (lazy if is_lazy else eager).update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            (lazy if is_lazy else eager).add(node.module.split(".")[0])
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            for child in node.body:
                visit(child, True)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, is_lazy)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, is_lazy)

    for path in sorted(package_dir.rglob("*.py")):
        if path.relative_to(package_dir).parts[0] != "cli":
            visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return eager, lazy


def _third_party(modules):
    return {_SHIPPED_WITH.get(m, m) for m in modules - set(sys.stdlib_module_names) - {"megzoo"}}


def test_package_never_imports_itself_by_name():
    # hubconf imports the package under a private name; an absolute ``import megzoo`` inside it
    # would pick up whatever other megzoo is installed. Relative imports only.
    eager, lazy = _package_imports(ROOT / "megzoo")
    assert "megzoo" not in eager | lazy


def test_hubconf_dependencies_are_the_packages_runtime_imports(hubconf):
    eager, lazy = _package_imports(ROOT / "megzoo")
    listed = set(hubconf.dependencies)
    assert len(hubconf.dependencies) == len(listed)
    # every module the package imports eagerly is listed; nothing is listed that it does not import
    assert _third_party(eager) <= listed, "add the package's new imports to hubconf.dependencies"
    assert listed <= _third_party(eager | lazy), "hubconf.dependencies lists modules the package does not use"
    import importlib.util

    assert all(importlib.util.find_spec(m) is not None for m in hubconf.dependencies)


# ------------------------------------------------------------------------- end to end: hub.list / help

_LIST_AND_HELP = """
import inspect
import megengine.hub as hub
""" + inspect.getsource(_signature) + """
kw = dict(git_host=HOST, protocol=PROTOCOL)
names = hub.list(REPO, **kw)
docs = {name: hub.help(REPO, name, **kw) for name in names}
module = hub.import_module(REPO, HOST, protocol=PROTOCOL)
marker = os.path.join(os.path.dirname(module.__file__), "HUB_MARKER")
emit(names=names, docs=docs, hubconf=module.__file__, package=module.__megzoo__.__file__,
     signatures={n: _signature(getattr(module, n)) for n in names},
     marker=open(marker).read().strip() if os.path.exists(marker) else None,
     megzoo_imported="megzoo" in sys.modules)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_list_and_help(tmp_path, hub_repo, server, protocol):
    client = Client(tmp_path, hub_repo, server, protocol)
    out = client.run(_LIST_AND_HELP)
    assert out["names"] == MODELS
    assert out["docs"] == {name: getattr(megzoo, name).__doc__ for name in MODELS}
    assert out["signatures"] == {name: _signature(getattr(megzoo, name)) for name in MODELS}
    assert _under(out["hubconf"], client.hub_dir) and _under(out["package"], client.hub_dir)
    assert out["marker"] == "master"  # the hub's default branch
    assert out["megzoo_imported"] is False  # the top-level name `megzoo` is never touched
    if protocol == "HTTPS":
        assert _archive_requests(server) == ["/hubtest/megzoo/archive/master.zip"]  # fetched once, then cached
    else:
        assert _archive_requests(server) == []


# ------------------------------------------------------------------------------ hub.load, no weights

_LOAD = """
import numpy as np
import megengine
import megengine.hub as hub
kw = dict(git_host=HOST, protocol=PROTOCOL)
x = megengine.tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32"))
model = hub.load(REPO, "resnet18", **kw)
params_1000 = int(sum(p.size for p in model.parameters()))
small = hub.load(REPO, "resnet18", num_classes=10, in_channels=1, **kw)
small.eval()
logits = small(megengine.tensor(np.ones((2, 1, 32, 32), "float32")))
backbone = hub.load(REPO, "resnet18", features_only=True, out_indices=(1, 4), **kw)
backbone.eval()
maps = backbone(x)
emit(type=type(model).__name__, module_file=sys.modules[type(model).__module__].__file__,
     params_1000=params_1000, params_10=int(sum(p.size for p in small.parameters())),
     logits=list(logits.shape), finite=bool(np.isfinite(logits.numpy()).all()),
     maps=[list(m.shape) for m in maps], report=repr(model.load_report),
     megzoo_imported="megzoo" in sys.modules)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_load_without_pretrained_weights(tmp_path, hub_repo, server, protocol):
    client = Client(tmp_path, hub_repo, server, protocol)
    out = client.run(_LOAD)
    assert out["type"] == "ResNet"
    assert _under(out["module_file"], client.hub_dir)
    assert out["params_1000"] == megzoo.model_info("resnet18")["params"] == 11_689_512
    assert out["params_10"] == 11_689_512 - 512 * 990 - 990 - 64 * 2 * 49  # fc 1000->10, conv1 3->1 channel
    assert out["logits"] == [2, 10] and out["finite"]
    assert out["maps"] == [[2, 64, 8, 8], [2, 512, 1, 1]]  # res2 (stride 4), res5 (stride 32)
    assert out["report"] == "None"
    assert out["megzoo_imported"] is False
    assert not client.megzoo_home.exists()  # no weights touched


# ------------------------------------------------------------------------------ hub.load, pretrained

_LOAD_PRETRAINED = """
import numpy as np
import megengine.hub as hub
model = hub.load(REPO, "resnet18", pretrained=True, git_host=HOST, protocol=PROTOCOL)
expected = np.load(NPZ)
state = model.state_dict()
mismatched = [k for k in expected.files
              if not (k in state and state[k].dtype == expected[k].dtype and np.array_equal(state[k], expected[k]))]
emit(mismatched=mismatched, extra=sorted(set(state) - set(expected.files)), compared=len(expected.files),
     report_file=model.load_report.file, module_file=sys.modules[type(model).__module__].__file__,
     megzoo_imported="megzoo" in sys.modules)
"""


def _serve_weights(server, weights):
    server.files[weights["path"]] = weights["bytes"]


def _check_pretrained(client, server, weights, out):
    assert out["compared"] > 100 and out["mismatched"] == [] and out["extra"] == []
    cached = client.megzoo_home / "weights" / weights["filename"]
    assert Path(out["report_file"]) == cached
    assert cached.read_bytes() == weights["bytes"]
    digest = hashlib.sha256(weights["bytes"]).hexdigest()
    assert (cached.parent / (cached.name + ".sha256")).read_text().split()[0] == digest  # recorded on download
    assert sorted(p.name for p in cached.parent.iterdir() if not p.name.endswith(".lock")) == \
        sorted([cached.name, cached.name + ".sha256"])  # no .part left behind
    assert not (client.mge_home / "serialized").exists()  # megengine's own loader (MGE_HOME/serialized) unused
    assert _under(out["module_file"], client.hub_dir) and out["megzoo_imported"] is False
    assert server.paths().count(weights["path"]) == 1


def test_load_pretrained_weights_through_megzoos_downloader(tmp_path, hub_repo, server, resnet18_weights):
    _serve_weights(server, resnet18_weights)
    client = Client(tmp_path, hub_repo, server)
    out = client.run(_LOAD_PRETRAINED, NPZ=resnet18_weights["npz"])
    _check_pretrained(client, server, resnet18_weights, out)
    seen = len(server.requests)

    # Again, offline: the hub's code cache (use_cache=True by default) and megzoo's weight cache
    # serve everything; not one request reaches the server.
    again = client.run(_LOAD_PRETRAINED, env={"MEGZOO_OFFLINE": "1"}, NPZ=resnet18_weights["npz"])
    assert again["mismatched"] == [] and again["report_file"] == out["report_file"]
    assert len(server.requests) == seen


def test_pretrained_offline_without_cached_weights_says_where_to_put_them(tmp_path, hub_repo, server,
                                                                          resnet18_weights):
    client = Client(tmp_path, hub_repo, server, extra_env={"MEGZOO_OFFLINE": "1"})
    out = client.run("""
        import megengine.hub as hub
        try:
            hub.load(REPO, "resnet18", pretrained=True, git_host=HOST)
        except Exception as exc:
            emit(error=type(exc).__name__, message=str(exc))
    """)
    assert out["error"] == "OfflineError"
    assert str(client.megzoo_home / "weights" / resnet18_weights["filename"]) in out["message"]
    assert not any(p.startswith("/weights/") for p in server.paths())


# ----------------------------------------------------------------------------- refs: branch, commit

_WHICH_CODE = """
import megengine.hub as hub
module = hub.import_module(REPO, HOST, commit=COMMIT, protocol=PROTOCOL)
marker = os.path.join(os.path.dirname(module.__file__), "HUB_MARKER")
model = hub.load(REPO, "resnet18", num_classes=3, git_host=HOST, commit=COMMIT, protocol=PROTOCOL)
emit(marker=open(marker).read().strip() if os.path.exists(marker) else None, hubconf=module.__file__,
     module_file=sys.modules[type(model).__module__].__file__, num_classes=model.num_classes)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_branch_ref(tmp_path, hub_repo, server, protocol):
    client = Client(tmp_path, hub_repo, server, protocol)
    out = client.run(_WHICH_CODE, REPO=f"{hub_repo.slug}:dev", COMMIT=None)
    assert out["marker"] == "dev" and out["num_classes"] == 3
    assert _under(out["module_file"], client.hub_dir)
    assert Path(out["module_file"]).parents[2] == Path(out["hubconf"]).parent  # the package of that copy
    assert _archive_requests(server) == (["/hubtest/megzoo/archive/dev.zip"] if protocol == "HTTPS" else [])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_commit_pin(tmp_path, hub_repo, server, protocol):
    client = Client(tmp_path, hub_repo, server, protocol)
    out = client.run(_WHICH_CODE, COMMIT=hub_repo.snapshot)  # an ancestor of master, without HUB_MARKER
    assert out["marker"] is None and out["num_classes"] == 3
    assert Path(out["module_file"]).parents[2] == Path(out["hubconf"]).parent
    expected = [f"/hubtest/megzoo/archive/{hub_repo.snapshot}.zip"] if protocol == "HTTPS" else []
    assert _archive_requests(server) == expected


# ---------------------------------------------------------------------------------------- errors

def test_unknown_entry_is_the_clients_runtime_error(tmp_path, hub_repo, server):
    out = Client(tmp_path, hub_repo, server).run("""
        import megengine.hub as hub
        errors = {}
        for call, entry in (("load", "resnet19"), ("help", "resnet19"), ("load", "dependencies")):
            try:
                getattr(hub, call)(REPO, entry, git_host=HOST)
            except RuntimeError as exc:
                errors[f"{call} {entry}"] = str(exc)
        emit(errors=errors)
    """)
    assert out["errors"] == {f"{call} {entry}": f"Cannot find callable {entry} in hubconf.py"
                             for call, entry in (("load", "resnet19"), ("help", "resnet19"), ("load", "dependencies"))}


def test_missing_dependency_is_reported_by_the_client(tmp_path, hub_repo, server):
    out = Client(tmp_path, hub_repo, server).run("""
        import megengine.hub as hub
        try:
            hub.load(REPO + ":missing-dep", "resnet18", git_host=HOST)
        except RuntimeError as exc:
            emit(error=str(exc), listed=hub.list(REPO + ":missing-dep", git_host=HOST))
    """)
    assert out["error"] == f"Missing dependencies: {hub_repo.missing_module}"
    assert out["listed"] == MODELS


# ------------------------------------------------------------------ isolation from another megzoo

_DUMMY_MEGZOO = '''
"""A different megzoo: if the hub used it, its builders would return a marker string."""
__version__ = "0.0.0+dummy"
from . import registry
def resnet18(*args, **kwargs):
    return "DUMMY-MEGZOO"
def list_models(*args, **kwargs):
    return ["resnet18"]
'''
_DUMMY_REGISTRY = '''
class _Entry:
    name = "resnet18"
    @staticmethod
    def builder(*args, **kwargs):
        return "DUMMY-MEGZOO"
def model_entries():
    return [_Entry()]
'''

_ISOLATION = """
if PREIMPORT:
    import megzoo as first
import megengine.hub as hub
model = hub.load(REPO, "resnet18", num_classes=10, git_host=HOST)
names = hub.list(REPO, git_host=HOST)
out = dict(model=type(model).__name__, module_file=sys.modules[type(model).__module__].__file__,
           names=names, megzoo_imported_by_hub="megzoo" in sys.modules)
import megzoo
out.update(megzoo_file=megzoo.__file__, unchanged=(megzoo is first) if PREIMPORT else None,
           megzoo_builder=repr(megzoo.resnet18(num_classes=10))[:40],
           same_class=type(model) is getattr(megzoo, "ResNet", None))
emit(**out)
"""


@pytest.mark.parametrize("case", ["dummy-on-path", "dummy-imported", "installed-imported"])
def test_hub_uses_the_downloaded_package_not_another_megzoo(tmp_path, hub_repo, server, case):
    extra = {}
    if case.startswith("dummy"):
        dummy = tmp_path / "elsewhere" / "megzoo"
        dummy.mkdir(parents=True)
        (dummy / "__init__.py").write_text(_DUMMY_MEGZOO)
        (dummy / "registry.py").write_text(_DUMMY_REGISTRY)
        extra["PYTHONPATH"] = str(dummy.parent)
    client = Client(tmp_path, hub_repo, server, extra_env=extra)
    out = client.run(_ISOLATION, PREIMPORT=case.endswith("imported"))

    assert out["model"] == "ResNet" and _under(out["module_file"], client.hub_dir)
    assert out["names"] == MODELS
    assert out["same_class"] is False
    if case == "dummy-on-path":
        assert out["megzoo_imported_by_hub"] is False
    else:
        assert out["unchanged"] is True
    if case.startswith("dummy"):
        assert Path(out["megzoo_file"]) == tmp_path / "elsewhere" / "megzoo" / "__init__.py"
        assert out["megzoo_builder"] == "'DUMMY-MEGZOO'"  # the other megzoo still works, untouched
    else:
        assert Path(out["megzoo_file"]) == ROOT / "megzoo" / "__init__.py"
        assert out["megzoo_builder"].startswith("ResNet")


# ------------------------------------------------------------------------------------- the cache

def test_use_cache_reuses_and_use_cache_false_refetches(tmp_path, hub_repo, server):
    client = Client(tmp_path, hub_repo, server)
    out = client.run("""
        import megengine.hub as hub
        first = hub.list(REPO, git_host=HOST)                    # downloads the archive
        cached = hub.list(REPO, git_host=HOST)                   # use_cache=True: the cached copy
        after_cached = sorted(os.listdir(HUB_DIR))
        fresh = hub.list(REPO, git_host=HOST, use_cache=False)   # downloads it again
        emit(same=first == cached == fresh, dirs=after_cached, dirs_after=sorted(os.listdir(HUB_DIR)))
    """)
    assert out["same"] and out["dirs"] == out["dirs_after"] and len(out["dirs"]) == 1
    assert out["dirs"][0].startswith("_".join(megengine.__version__.split(".")) + "_")
    assert _archive_requests(server) == ["/hubtest/megzoo/archive/master.zip"] * 2


# ------------------------------------------------------------------ port 443 busy: the proxy fallback

def test_https_proxy_fallback_when_port_443_is_busy(tmp_path, hub_repo, certificate, resnet18_weights):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind((HOST, 443))  # make sure 443 is taken (it may be already, e.g. by another server)
        holder.listen(1)
    except OSError:
        pass
    try:
        cert, key = certificate
        with HubServer(cert, key, {hub_repo.slug: hub_repo.bare}, transport="auto") as proxied:
            assert proxied.transport == "proxy" and proxied.backend_port != 443
            _serve_weights(proxied, resnet18_weights)
            client = Client(tmp_path, hub_repo, proxied)
            assert client.env["HTTPS_PROXY"] == client.env["https_proxy"]
            assert "NO_PROXY" not in client.env and "no_proxy" not in client.env
            out = client.run(_LOAD_PRETRAINED + "emit(names=hub.list(REPO, git_host=HOST))\n",
                             NPZ=resnet18_weights["npz"])
            _check_pretrained(client, proxied, resnet18_weights, out)
            assert out["names"] == MODELS
            assert _archive_requests(proxied) == ["/hubtest/megzoo/archive/master.zip"]
            assert set(proxied.proxy_connects) == {f"{HOST}:443"}  # every request went through the tunnel
    finally:
        holder.close()


def test_transport_env_var_forces_the_proxy(monkeypatch, certificate, hub_repo):
    import requests

    monkeypatch.setenv("MEGZOO_TEST_HUB_TRANSPORT", "proxy")
    cert, key = certificate
    with HubServer(cert, key, {hub_repo.slug: hub_repo.bare}) as proxied:
        assert proxied.transport == "proxy"
        proxies = {"https": proxied.client_env()["HTTPS_PROXY"]}
        archive = requests.get(proxied.url("/hubtest/megzoo/archive/master.zip"), proxies=proxies,
                               verify=str(cert), timeout=30)
        assert archive.status_code == 200 and archive.content[:4] == b"PK\x03\x04"
        with pytest.raises(requests.exceptions.ProxyError):  # the proxy only tunnels to the test server
            requests.get("https://127.0.0.2:443/", proxies=proxies, verify=str(cert), timeout=30)
        assert proxied.proxy_connects == [f"{HOST}:443", "127.0.0.2:443"]
