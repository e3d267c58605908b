"""``build_patched_wheel.py --check-release WHEEL``: what of the series needs a human for a new release."""

import shutil

from conftest import ROOT, base_wheel

import build_patched_wheel as bpw


def _run(*args, capsys):
    code = bpw.main(list(args))
    return code, capsys.readouterr()


def test_a_supported_release_needs_nothing(capsys):
    wheel = base_wheel("torch_tensorrt", "2.14.0")
    code, out = _run("--check-release", str(wheel), capsys=capsys)
    assert code == 0, out.out + out.err
    assert "applies to" in out.out


def test_every_hunk_that_does_not_apply_is_listed(capsys):
    # The main series against the 2.11 sources: 0002 and 0003 need the 2.11 line's own hunks
    wheel = base_wheel("torch_tensorrt", "2.11.0")
    code, out = _run(
        "--check-release", str(wheel), "--base-version", "2.13.0", capsys=capsys
    )
    assert code == 1
    lines = out.out.splitlines()
    assert lines and all("does not apply" in line for line in lines), out.out
    assert any(line.startswith("0002-") for line in lines)
    assert any(line.startswith("0003-") for line in lines)
    assert all("@@ -" in line for line in lines)


def test_a_patch_that_changes_nothing_is_listed(tmp_path, capsys):
    patches = tmp_path / "patches"
    shutil.copytree(ROOT / "patches", patches)
    series = patches / "series"
    first = series.read_text().splitlines()
    # The same patch twice: the second time git apply fails (already applied) and is listed
    name = [line for line in first if line and not line.startswith("#")][0]
    series.write_text(series.read_text() + name + "\n")
    wheel = base_wheel("torch_tensorrt", "2.14.0")
    code, out = _run(
        "--check-release", str(wheel), "--patches-dir", str(patches), capsys=capsys
    )
    assert code == 1
    assert name in out.out


def test_not_a_wheel_is_one_error(tmp_path, capsys):
    bogus = tmp_path / "torch_tensorrt-9.9.9-py3-none-any.whl"
    bogus.write_text("not a zip")
    code, out = _run("--check-release", str(bogus), capsys=capsys)
    assert code == 2
    assert out.err.count("error:") == 1
