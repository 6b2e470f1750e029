"""MegEngine hub entry points: every megzoo model through ``megengine.hub``.

    import megengine.hub as hub
    hub.list("ORG/megzoo")                                  # the model names (megzoo.list_models())
    print(hub.help("ORG/megzoo", "resnet50"))               # the builder's docstring
    model = hub.load("ORG/megzoo", "resnet50", pretrained=True)
    model = hub.load("ORG/megzoo", "resnet18", num_classes=10, in_channels=1)

Each entry *is* the package's builder function (same signature, docstring and options:
``pretrained``, ``num_classes``, ``features_only``, ``out_indices``, ...). Weights are fetched by
megzoo's own verified, atomic downloader into megzoo's cache (``MEGZOO_HOME``; see docs/hub.md).

The ``megzoo`` package used here is always the one next to this file (the copy the hub
downloaded), imported under a private module name, so an installed or already imported ``megzoo``
of another version is neither used nor disturbed. ``hub.import_module(...).__megzoo__`` is that
package (e.g. ``.model_info("resnet50")``).
"""

# Modules MegEngine's hub checks with importlib before calling an entry (importable names).
dependencies = ["megengine", "numpy", "cv2", "requests", "urllib3", "tqdm"]


def __import_bundled_megzoo():
    """Import ``./megzoo`` (next to this file) as ``_megzoo_hub_<digest>``; return it and its model entries.

    The digest covers the package's location and the content of its files, so the same copy is
    imported once per process and reused by later hub calls, while a refreshed copy with other
    code (``use_cache=False`` after a new commit) is imported afresh.
    """
    import hashlib
    import importlib.util
    import os
    import sys

    package_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "megzoo")
    init_file = os.path.join(package_dir, "__init__.py")
    if not os.path.isfile(init_file):
        raise ImportError(f"hubconf.py expects the megzoo package next to it, but {init_file} does not exist")

    digest = hashlib.sha256(package_dir.encode())
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for filename in sorted(files):
            if filename.endswith((".py", ".json")):
                path = os.path.join(root, filename)
                digest.update(b"\0" + os.path.relpath(path, package_dir).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read())
    name = "_megzoo_hub_" + digest.hexdigest()[:16]

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, init_file, submodule_search_locations=[package_dir])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package  # before executing: the package's relative imports resolve through it
        try:
            spec.loader.exec_module(package)
        except BaseException:
            for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                del sys.modules[key]
            raise
    return sys.modules[name], sys.modules[name + ".registry"].model_entries()


__megzoo__, __entries = __import_bundled_megzoo()
# One entry per registered model: the package's own builder function (same signature and docstring).
globals().update({entry.name: entry.builder for entry in __entries})
# megengine.hub.list reports every callable whose name does not start with "__"; leave only the models.
del __import_bundled_megzoo, __entries
