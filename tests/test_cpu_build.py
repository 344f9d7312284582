"""kernels/cpu_build.py: a lock file that a killed build left behind is removed before the
next build (torch's extension builder would wait on it forever), a recent one is not."""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch.utils.cpp_extension import _get_build_directory

from kernels import cpu_build


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = cpu_build.build_name("pagedesk_lock_test", "// source")
    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    assert tmp_path in lock.parents
    lock.touch()
    cpu_build.remove_stale_lock(name)
    assert lock.exists()  # a build in progress elsewhere: left alone
    old = time.time() - cpu_build.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    cpu_build.remove_stale_lock(name)
    assert not lock.exists()
    cpu_build.remove_stale_lock(name)  # no lock: nothing to do
