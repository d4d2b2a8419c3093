"""hopekit.checkpoint: refused files (truncated, random, flipped bytes, disallowed objects, foreign,
other versions), atomic writes, the version-1 reader, and the run-directory lock.

The checkpoints come from a 3-step run of a 2-layer, width-32 decoder (tests/_train_worker.py).
"""

from __future__ import annotations

import argparse
import collections
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from hopekit.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    RunLockedError,
    content_hash,
    load_checkpoint,
    prepare_run_dir,
    read_checkpoint,
    save_checkpoint,
)
from tests._train_worker import run, tiny, unwritable_dir


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(tiny(steps=3, checkpoint_every=0), out)
    finally:
        torch.set_num_threads(threads)
    return out / CHECKPOINT_NAME


def _refused(path: Path, match: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is None                                     # no raw zip/pickle traceback
    assert info.value.__context__ is None or info.value.__suppress_context__
    return info.value


# ----- refused files ---------------------------------------------------------------------------------

def test_truncated_or_random_checkpoint_is_refused_clearly(tmp_path, finished_run):
    data = finished_run.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b"",
             "tail-cut": data[:-10]}
    for name, payload in cases.items():
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(payload)
        _refused(bad, "truncated or corrupt")

    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run(tiny(steps=3, checkpoint_every=0), out, resume=True)


def _tensor_records(path: Path) -> list[tuple[str, int, int]]:
    """``(name, data offset, size)`` of every tensor storage inside a torch.save zip (stored, not compressed)."""
    out = []
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if "/data/" in info.filename and info.compress_type == zipfile.ZIP_STORED:
                f.seek(info.header_offset)
                header = f.read(30)
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                out.append((info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size))
    return out


def test_bytes_flipped_inside_a_tensor_are_refused_by_the_content_hash(tmp_path, finished_run):
    records = _tensor_records(finished_run)
    assert len(records) > 10                                                 # model + optimiser storages
    name, offset, size = max(records, key=lambda r: r[2])                   # the largest: the embedding
    data = bytearray(finished_run.read_bytes())
    middle = offset + size // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    torch.load(bad, weights_only=True)                                       # torch itself does not notice
    error = _refused(bad, "content hash does not match")
    assert "corrupt" in str(error)
    with pytest.raises(CheckpointError, match="content hash does not match"):
        load_checkpoint(bad)

    # the smallest storage too (a 0-d optimiser step counter or a norm gain): every tensor is covered
    name, offset, size = min(records, key=lambda r: r[2])
    data = bytearray(finished_run.read_bytes())
    data[offset] ^= 0x01
    bad.write_bytes(bytes(data))
    _refused(bad, "content hash does not match")


class _OrderedSubclass(collections.OrderedDict):
    pass


class _Custom:
    pass


def test_disallowed_objects_are_named_not_called_corrupt(tmp_path):
    cases = {"blocked-module": (os.system, r"posix\.system|nt\.system"),          # module blocked by torch
             "dict-subclass": (_OrderedSubclass(a=1), "_OrderedSubclass"),
             "custom-class": (_Custom(), "_Custom"),
             "namespace": (argparse.Namespace(a=1), "Namespace")}
    for name, (obj, shown) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"format": "hopekit.checkpoint", "x": obj}, path)
        error = _refused(path, "holds a disallowed object")
        assert "truncated" not in str(error) and "weights_only=True" in str(error)
        assert __import__("re").search(shown, str(error)), (name, str(error))


def test_foreign_or_unsafe_or_other_version_checkpoint_is_refused(tmp_path, finished_run):
    torch.save({"weights": torch.ones(3)}, tmp_path / "foreign.pt")
    _refused(tmp_path / "foreign.pt", "not a hopekit training checkpoint")

    torch.save({"format": "hopekit.checkpoint", "x": argparse.Namespace(a=1)}, tmp_path / "unsafe.pt")
    _refused(tmp_path / "unsafe.pt", "Namespace")

    ckpt = torch.load(finished_run, weights_only=True)
    torch.save({**ckpt, "version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    _refused(tmp_path / "future.pt", "format version")

    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_checkpoint(tmp_path / "nothing-here.pt")


def test_hashes_are_stored_and_version_1_files_still_read(tmp_path, finished_run):
    ckpt = read_checkpoint(finished_run)
    assert ckpt["version"] == FORMAT_VERSION == 2
    assert ckpt["content_hash"] == content_hash(ckpt) and ckpt["content_hash"].startswith("sha256:")
    assert set(ckpt["data_hash"]) == {"batch0", "stream"} and ckpt["data_hash"]["stream"].startswith("sha256:")

    old = {k: v for k, v in ckpt.items() if k not in ("content_hash", "data_hash")}
    torch.save({**old, "version": 1}, tmp_path / "v1.pt")                     # written before the hashes
    model, _, state = load_checkpoint(tmp_path / "v1.pt")
    assert state["step"] == 3 and torch.equal(model.state_dict()["tok_emb.weight"], ckpt["model"]["tok_emb.weight"])

    torch.save({**old, "version": 2}, tmp_path / "v2-without-hash.pt")       # version 2 must carry them
    _refused(tmp_path / "v2-without-hash.pt", r"incomplete, missing \['content_hash', 'data_hash'\]")


def test_checkpoint_write_is_atomic(tmp_path, finished_run):
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(finished_run.read_bytes())
    with pytest.raises(Exception):
        save_checkpoint(path, {"unpicklable": lambda: None})
    assert read_checkpoint(path)["step"] == 3                                # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]         # and no temporary left behind


# ----- the run directory -----------------------------------------------------------------------------

def test_run_dir_lock_is_exclusive_and_names_the_holder(tmp_path):
    out = tmp_path / "run"
    first = prepare_run_dir(out)                                             # creates the directory
    try:
        with pytest.raises(RunLockedError) as info:                          # a second descriptor conflicts,
            prepare_run_dir(out)                                             # even in the same process
        assert str(out) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    finally:
        first.release()
    prepare_run_dir(out).release()                                           # released: free again
    assert {p.name for p in out.iterdir()} == {".lock"}                      # no probe file left


def test_unwritable_run_dir_is_refused_naming_it(tmp_path):
    d = unwritable_dir(tmp_path)
    with pytest.raises(OSError, match=f"out_dir {d}: cannot write there"):
        prepare_run_dir(d)
