"""megzoo.host: the cache root, usable CPUs, the CPU's identity and atomic writes."""
import os

import pytest

from megzoo import host


def test_megzoo_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MEGZOO_HOME", str(tmp_path / "h"))
    assert host.megzoo_home() == tmp_path / "h"
    monkeypatch.setenv("MEGZOO_HOME", "  ")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert host.megzoo_home() == tmp_path / ".cache" / "megzoo"


def test_usable_cpus_follows_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5, 7})
    assert host.usable_cpus() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())
    assert host.usable_cpus() == 1


def test_cpuinfo_reads_the_first_processor(tmp_path):
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "stepping\t: 1\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\ncpu family\t: 99\n")
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    fields = host._read_cpuinfo(str(path))
    assert (fields["cpu family"], fields["model"], fields["model name"]) == ("26", "2", "AMD EPYC")
    assert fields["flags"] == "fpu avx2 fma" and "processor" in fields
    assert host._read_cpuinfo(str(tmp_path / "missing")) == {}


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "f.json"
    host.atomic_write_text(target, "old\n")
    assert target.read_text() == "old\n"

    def half_then_fail(f):
        f.write(b"new but unfinish")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        host.atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"  # the old content, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]  # no temporary file left
    host.atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
