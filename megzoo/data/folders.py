"""The one lister of image folders: which files of ``DIR/CLASS/**/IMAGE`` are images, and of which class.

``megzoo train``, ``megzoo eval`` and ``megzoo clean`` list class folders with
:func:`list_image_folder`, calibration folders are listed with :func:`list_image_files`, so every
command sees the same files under the same rules:

* classes: the sorted names of ``DIR``'s sub-folders (links to folders count); hidden ones
  (names starting with ".": ``.ipynb_checkpoints``) left out;
* images: files whose names end in an image extension (:data:`megzoo.images.IMAGE_EXTENSIONS`,
  any case; hidden ones, e.g. macOS ``._x.jpg``, left out) anywhere below their class folder,
  folder by folder (depth first, names sorted), each folder's files sorted by name;
* a link to a folder is followed when its real folder lies inside the class folder's real
  folder; each real folder is listed once, so a link back into the class (``self -> .``) adds
  nothing and no walk can loop;
* a link to a folder outside its class folder (``1/loopdir -> ..``, ``cat/more -> ../dog``, one
  to another disk) is not followed: the images there were not filed under this class, and a link
  to a parent would list the whole dataset again under it. The listing says so once, in one
  ``megzoo: ...`` line on stderr with how many links it skipped and the first; a class folder
  that is itself a link to the data folder or above it is skipped the same way;
* a link to a file is an image of the folder that holds the link, wherever the file is.
"""
import os
import sys
from dataclasses import dataclass, field
from typing import List, Tuple

from ..images import is_image_file

__all__ = ["FolderListing", "folder_listing", "list_image_folder", "list_image_files"]


@dataclass
class FolderListing:
    """What :func:`folder_listing` found: ``classes`` (sorted folder names), ``samples``
    ``(path, class index)`` and ``skipped``: ``(link, its real folder)`` of the links not followed."""

    folder: str
    classes: List[str] = field(default_factory=list)
    samples: List[Tuple[str, int]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def warning(self, inside: str = "its class folder") -> str:
        """The one line that says what was skipped ("" if nothing was)."""
        if not self.skipped:
            return ""
        link, target = self.skipped[0]
        n = len(self.skipped)
        return (f"megzoo: skipped {n} link{'s' if n > 1 else ''} to a folder outside {inside} under {self.folder} "
                f"({'the first: ' if n > 1 else ''}{link} -> {target}): images reached through such a link belong "
                "to no class and are left out; to use them, move them (or links to the image files) into the class "
                "folder")

    def warn(self, inside: str = "its class folder") -> None:
        """Print :meth:`warning` on stderr, if there is anything to say."""
        message = self.warning(inside)
        if message:
            print(message, file=sys.stderr, flush=True)


def _visible(name: str) -> bool:
    return not name.startswith(".")  # .ipynb_checkpoints, macOS ._x.jpg resource forks, .DS_Store


def _inside(path: str, folder: str) -> bool:
    """True when the real path ``path`` is the real folder ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_images(top: str, skipped: List[Tuple[str, str]]) -> List[str]:
    """Image files under ``top`` by the rules of the module docstring; links to folders outside
    ``top``'s real folder are appended to ``skipped`` instead of followed."""
    base = os.path.realpath(top)
    files: List[str] = []
    seen = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:  # a link back to a folder listed already
                continue
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:  # unreadable or vanished: as os.walk, nothing listed from it
            continue
        folders = []
        for entry in entries:
            if not _visible(entry.name):
                continue
            try:
                is_folder = entry.is_dir()  # follows links
            except OSError:
                is_folder = False
            if not is_folder:
                if is_image_file(entry.name):
                    files.append(entry.path)
            elif entry.is_symlink() and not _inside(os.path.realpath(entry.path), base):
                skipped.append((entry.path, os.path.realpath(entry.path)))
            else:
                folders.append(entry.path)
        stack.extend(reversed(folders))
    return files


def folder_listing(folder) -> FolderListing:
    """The classes and images of ``folder`` (``folder/CLASS/**/IMAGE``, module docstring), without
    warning about skipped links (see :meth:`FolderListing.warn`)."""
    folder = os.fspath(folder)
    listing = FolderListing(folder)
    with os.scandir(folder) as scan:
        listing.classes = sorted(e.name for e in scan if _visible(e.name) and e.is_dir())
    root = os.path.realpath(folder)
    for label, name in enumerate(listing.classes):
        top = os.path.join(folder, name)
        if _inside(root, os.path.realpath(top)):  # DIR/all -> . (or ..): every class again
            listing.skipped.append((top, os.path.realpath(top)))
            continue
        listing.samples += [(path, label) for path in _walk_images(top, listing.skipped)]
    return listing


def list_image_folder(folder) -> Tuple[List[str], List[Tuple[str, int]]]:
    """``(classes, samples)`` of ``folder`` (module docstring): classes are its sorted sub-folder
    names, samples ``(path, class index)`` in class order. Says once on stderr when links to
    folders outside their class were skipped."""
    listing = folder_listing(folder)
    listing.warn()
    return listing.classes, listing.samples


def list_image_files(folder) -> List[str]:
    """Every image file under ``folder`` at any depth (flat, or class folders), by the same rules:
    links to folders followed only inside ``folder`` (a line on stderr says what was skipped)."""
    folder = os.fspath(folder)
    listing = FolderListing(folder)
    files = _walk_images(folder, listing.skipped)
    listing.warn(inside=folder)
    return files
