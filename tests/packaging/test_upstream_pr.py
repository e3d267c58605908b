"""The upstream pull request export: runs, is deterministic and carries every patch."""

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT, base_wheel

sys.path.insert(0, str(ROOT))
import export_upstream_pr as pr  # noqa: E402


def _export(out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "export_upstream_pr.py"), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_export_is_deterministic(tmp_path):
    first = _export(tmp_path / "a")
    second = _export(tmp_path / "b")
    assert first == second
    assert "PR.md" in first


def test_export_carries_every_patch_and_the_test_file(tmp_path):
    files = _export(tmp_path / "out")
    mails = [files[n].decode() for n in sorted(files) if n.endswith(".patch")]
    expected = pr.read_series(ROOT / "patches" / "series") + pr.read_series(
        ROOT / "patches" / "upstream-only" / "series"
    )
    assert len(mails) == len(expected) + len(pr.TEST_FILES)
    for n, mail in enumerate(mails, start=1):
        assert f"Subject: [PATCH {n}/{len(mails)}] " in mail
    everything = "".join(mails)
    for patch in expected:
        _, diff = pr.split_dep3(patch)
        assert diff in everything, f"{patch.name} is not in the export"
    for path, _, _ in pr.TEST_FILES:
        test_source = (ROOT / path).read_text()
        assert f"+++ b/{path}" in everything
        assert all(f"+{line}\n" in everything for line in test_source.splitlines())
    pr_md = files["PR.md"].decode()
    for ref in ("#3728", "#4647", "#4664", "#4700", "# Checklist:"):
        assert ref in pr_md


def test_exported_code_applies_to_a_release_tree(tmp_path):
    """git am needs upstream (docs/upstream.md); here the code and test mails go onto 2.14.0."""
    files = _export(tmp_path / "out")
    tree = tmp_path / "tree"
    subprocess.run(["git", "init", "-q", str(tree)], check=True)
    with zipfile.ZipFile(base_wheel("torch_tensorrt", "2.14.0")) as zf:
        members = [n for n in zf.namelist() if n.startswith("torch_tensorrt/")]
        zf.extractall(tree / "py", members=members)
    mails = [n for n in sorted(files) if n.endswith(".patch") and "docs" not in n]
    assert len(mails) == len(pr.read_series(ROOT / "patches" / "series")) + len(
        pr.TEST_FILES
    )
    for name in mails:
        result = subprocess.run(
            ["git", "apply", str(tmp_path / "out" / name)],
            cwd=tree,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
    for path, _, _ in pr.TEST_FILES:
        assert (tree / path).read_text() == (ROOT / path).read_text()
