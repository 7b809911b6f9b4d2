"""``make native`` is optional: without it the capture modules are plain Python; with it, a
compiled module must not be older than its source (an edit would be shadowed by old code)."""

from __future__ import annotations

import os

from celerydiag.network.capture import native


def test_no_stale_compiled_module() -> None:
    stale = native.stale_native_modules()
    assert not stale, f"compiled {stale} older than the source: run `make native` again or `make clean-native`"


def test_hot_modules_exist_as_source() -> None:
    for module in native.HOT_MODULES:
        assert os.path.exists(os.path.join(native.PACKAGE_DIR, f"{module}.py"))


def test_stale_build_is_reported(tmp_path, monkeypatch) -> None:
    src = tmp_path / "tcp.py"
    so = tmp_path / "tcp.cpython-311-x86_64-linux-gnu.so"
    so.write_bytes(b"")
    src.write_text("")
    os.utime(so, (1_000_000, 1_000_000))
    monkeypatch.setattr(native, "PACKAGE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "HOT_MODULES", ("tcp",))
    assert native.native_modules() == ["tcp"]
    assert native.stale_native_modules() == ["tcp"]
    os.utime(so, None)
    os.utime(src, (1_000_000, 1_000_000))
    assert native.stale_native_modules() == []
    shared = tmp_path / "_native__mypyc.cpython-311-x86_64-linux-gnu.so"  # the code itself: older = stale
    shared.write_bytes(b"")
    os.utime(shared, (1_000, 1_000))
    assert native.stale_native_modules() == ["tcp"]
