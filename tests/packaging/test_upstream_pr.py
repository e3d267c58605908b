"""The upstream pull request export: one directory per pull request, each carrying its patches,
tests and docs, in upstream's test layout, with a real identity and nothing fork-only.

The checks against upstream's own tree (its ``__init__.py`` and conftest files, its pytest
configuration, ``git am``) read a git repository of pytorch/TensorRT holding the base commit,
named by ``TORCHTRT_UPSTREAM_GIT`` (a clone or a bare mirror); without it they skip and say so.
The checks against this repository's layout cannot skip.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, base_wheel

sys.path.insert(0, str(ROOT))
import export_upstream_pr as pr  # noqa: E402

AUTHOR = "Ada Lovelace <ada@lovelace.dev>"
IDENTITY = ("Ada Lovelace", "ada@lovelace.dev")
UPSTREAM = os.environ.get("TORCHTRT_UPSTREAM_GIT")
RUNTIME = "tests/py/dynamo/runtime"
# The directories on the way to the GPU test files; upstream has __init__.py in exactly these
PACKAGE_DIRS = ("tests", "tests/py", "tests/py/dynamo", RUNTIME)
OUR_INIT_FILES = {"tests/py/dynamo/__init__.py", f"{RUNTIME}/__init__.py"}
# Words true only in this repository (the list, independent of the exporter's own)
FORK_WORDS = (
    "docs/",
    "this repository",
    "2.14",
    "patched build",
    "gpu-validation",
    "unpatched",
    "upstream's",
    "performance.md",
)

# A pytest plugin for collection on a machine without CUDA: CUDA reported available and
# torch_tensorrt a stub, so the GPU test modules import to their end (relative imports included)
FAKE_CUDA_PLUGIN = """
import importlib.abc
import importlib.machinery
import sys
import types
from unittest import mock

import torch

torch.cuda.is_available = lambda: True


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torch_tensorrt" or name.startswith("torch_tensorrt."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
"""


# --- helpers ---------------------------------------------------------------------------------


def _files(out: Path) -> dict:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The export of this repository, fork-only lines included (their own test fails on them)."""
    out = tmp_path_factory.mktemp("export") / "upstream-pr"
    planned, skipped = pr.export(out, IDENTITY, forbid_fork_only=False)
    return out, planned, skipped


def _mails(directory: Path):
    return sorted(directory.glob("*.patch"))


def _apply_mails(tree, pr_dir, option, label=""):
    """``git apply OPTION`` each mail of the pull request directory ``pr_dir`` to ``tree``."""
    for mail in _mails(pr_dir):
        result = subprocess.run(
            ["git", "apply", option, str(mail)],
            cwd=tree,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{label}{mail.name}: {result.stderr}"


def _stack(planned, item):
    return [*item.ancestors, item]


def _lay_out(tree: Path, out: Path, stack, init_files) -> None:
    """A tree with ``init_files`` ({path: text}) and the test files of ``stack``'s mails."""
    for path, text in init_files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    if not (tree / ".git").exists():
        subprocess.run(["git", "init", "-q", str(tree)], check=True)
    for step in stack:
        _apply_mails(tree, out / step.name, "--include=tests/*")


def _our_init_files() -> dict:
    return {
        p.relative_to(ROOT).as_posix(): p.read_text()
        for p in (ROOT / "tests").rglob("__init__.py")
    }


def _top_level_names(path: Path) -> set:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def unresolved_relative_imports(tree: Path, test_file: Path) -> list:
    """Every relative import of ``test_file`` that does not resolve inside ``tree``: the package
    chain needs ``__init__.py`` files, the module must exist and define each imported name.
    """
    problems = []
    source = ast.parse(test_file.read_text())
    for node in ast.walk(source):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        where = f"{test_file.relative_to(tree)}:{node.lineno}"
        package = test_file.parent
        for _ in range(node.level - 1):
            package = package.parent
        chain = [test_file.parent]
        while chain[-1] != package:
            chain.append(chain[-1].parent)
        missing = [d for d in chain if not (d / "__init__.py").is_file()]
        if missing or tree not in package.parents:
            problems.append(
                f"{where}: {'.' * node.level}{node.module or ''} leaves the package "
                f"({', '.join(str(d.relative_to(tree)) for d in missing)} has no __init__.py)"
            )
            continue
        target = package
        for part in (node.module or "").split(".") if node.module else []:
            target = target / part
        module = (
            target.with_suffix(".py")
            if target.with_suffix(".py").is_file()
            else target / "__init__.py"
        )
        if not module.is_file():
            problems.append(f"{where}: no module {'.' * node.level}{node.module}")
            continue
        defined = _top_level_names(module)
        for alias in node.names:
            submodule = module.parent / f"{alias.name}.py"
            if alias.name not in defined and not submodule.is_file():
                problems.append(
                    f"{where}: {module.relative_to(tree)} defines no {alias.name}"
                )
    return problems


def _collect(tree: Path, plugin_dir: Path, files, extra=()):
    """pytest --collect-only from tests/py/dynamo, as upstream's runtime tiers run it."""
    env = dict(os.environ, PYTHONPATH=str(plugin_dir), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "fake_cuda_trt",
            "-p",
            "no:cacheprovider",
            *extra,
            *[f.replace("tests/py/dynamo/", "", 1) for f in files],
        ],
        cwd=tree / "tests" / "py" / "dynamo",
        capture_output=True,
        text=True,
        env=env,
    )


def _collected(output: str) -> dict:
    """Tests per file in ``--collect-only -q`` output, keyed by the file's repository path."""
    counts: dict = {}
    for line in output.splitlines():
        if "::" in line:
            key = f"{RUNTIME}/{Path(line.split('::', 1)[0]).name}"
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugin")
    (d / "fake_cuda_trt.py").write_text(FAKE_CUDA_PLUGIN)
    return d


@pytest.fixture(scope="module")
def repo_collection(plugin_dir):
    """Tests per file when this repository's own GPU test files are collected."""
    files = sorted(
        p.relative_to(ROOT).as_posix() for p in ROOT.glob(f"{RUNTIME}/test_*.py")
    )
    result = _collect(ROOT, plugin_dir, files)
    assert result.returncode == 0, result.stdout + result.stderr
    return _collected(result.stdout)


def _upstream_show(path: str) -> bytes:
    return subprocess.run(
        ["git", "-C", UPSTREAM, "show", f"{pr.BASE_COMMIT}:{path}"],
        capture_output=True,
        check=True,
    ).stdout


@pytest.fixture(scope="module")
def upstream_tree_files():
    """{path: bytes} of upstream's __init__.py and conftest files under tests/py and its
    pyproject.toml, at the base commit."""
    if not UPSTREAM:
        pytest.skip(
            "no upstream tree: set TORCHTRT_UPSTREAM_GIT to a clone of pytorch/TensorRT "
            f"holding {pr.BASE_COMMIT}"
        )
    has = subprocess.run(
        ["git", "-C", UPSTREAM, "cat-file", "-e", f"{pr.BASE_COMMIT}^{{commit}}"],
        capture_output=True,
    )
    assert has.returncode == 0, f"{UPSTREAM} lacks {pr.BASE_COMMIT}"
    names = subprocess.run(
        [
            "git",
            "-C",
            UPSTREAM,
            "ls-tree",
            "-r",
            "--name-only",
            pr.BASE_COMMIT,
            "tests",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    wanted = [
        n for n in names if n.rsplit("/", 1)[-1] in ("__init__.py", "conftest.py")
    ]
    return {n: _upstream_show(n) for n in wanted + ["pyproject.toml"]}


# --- the export ------------------------------------------------------------------------------


def test_export_is_deterministic(tmp_path):
    pr.export(tmp_path / "a", IDENTITY, forbid_fork_only=False)
    pr.export(tmp_path / "b", IDENTITY, forbid_fork_only=False)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first == second
    assert "README.md" in first


def test_every_patch_test_file_and_docs_patch_is_exported_once(exported):
    out, planned, skipped = exported
    everything = {}
    for item in planned:
        mails = _mails(out / item.name)
        assert mails, item.name
        for n, mail in enumerate(mails, start=1):
            text = mail.read_text()
            assert f"Subject: [PATCH {n}/{len(mails)}] " in text
            assert f"From: {AUTHOR}\n" in text
            everything[f"{item.name}/{mail.name}"] = text
    joined = "".join(everything.values())
    for series in (pr.SERIES, pr.DOCS_SERIES):
        for patch in pr.read_series(ROOT / series):
            _, diff = pr.split_dep3(patch)
            holders = [k for k, v in everything.items() if diff in v]
            assert len(holders) == 1, f"{patch.name} is in {holders}"
    for path in sorted(ROOT.glob(pr.TEST_GLOB)):
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py":
            continue
        owner = [p for p in pr.PULL_REQUESTS if rel in {t.path for t in p.tests}]
        assert len(owner) == 1, rel
        if owner[0].name not in {i.name for i in planned}:
            assert any(s.startswith(owner[0].name) for s in skipped), rel
            continue
        assert joined.count(f"+++ b/{rel}\n") == 1, rel
        assert all(f"+{line}\n" in joined for line in path.read_text().splitlines())


def test_each_pull_request_carries_its_own_files(exported):
    out, planned, _ = exported
    by_name = {i.name: i for i in planned}
    assert list(by_name)[:3] == ["offload-gating", "keep-on-device", "refit-decision"]
    expected = {
        "offload-gating": (
            "dynamo/utils.py",
            "test_mutable_offload.py",
            "compilation_settings.rst",
        ),
        "keep-on-device": ("test_mutable_selective_offload.py", "mutable_module.rst"),
        "refit-decision": ("test_mutable_refit_decision.py", "mutable_module.rst"),
    }
    for name, paths in expected.items():
        text = "".join(m.read_text() for m in _mails(out / name))
        for path in paths:
            assert re.search(rf"^\+\+\+ b/\S*{re.escape(path)}$", text, re.M), (
                name,
                path,
            )
    assert by_name["offload-gating"].pr.stacked_on is None
    assert (out / "keep-on-device" / "ISSUE.md").is_file()
    assert not (out / "offload-gating" / "ISSUE.md").exists()


def test_pr_md_stands_alone(exported):
    out, planned, _ = exported
    for item in planned:
        text = (out / item.name / "PR.md").read_text()
        assert text.startswith("# ")
        assert pr.BASE_COMMIT in text
        assert "# Checklist:" in text and "## How it was tested" in text
        assert "Where it ran" in text
        assert "cd tests/py/dynamo && python -m pytest -ra runtime/" in text
        assert text.index("## Base, commits") < text.index("## Type of change")
        for ancestor in item.ancestors:
            assert ancestor.title in text
        for word in FORK_WORDS:
            if word in ("2.14", "upstream's"):
                continue
            assert word not in text, f"{item.name}/PR.md: {word!r}"
        assert not re.search(
            r"\]\((?!https://)[^)]*\.md\b", text
        ), "link to a local page"
    gating = (out / "offload-gating" / "PR.md").read_text()
    for ref in ("#3728", "#4647", "#4700"):
        assert ref in gating
    assert "#ISSUE" in (out / "keep-on-device" / "PR.md").read_text()
    decision = (out / "refit-decision" / "PR.md").read_text()
    assert "#4664" in decision and "#4153" in decision
    # The cost question: per check and per refit, GPU and CPU, against both alternatives,
    # with the commands that measured them and what is still to measure
    for needle in (
        "per check, weights on the GPU",
        "per check, weights on the CPU",
        "per compilation or refit, weights on the GPU",
        "per compilation or refit, weights on the CPU",
        "output comparison",
        "SHA-256",
        "to measure",
        "fingerprint_cost.py",
        "bench_mttm.py",
    ):
        assert needle in decision, needle
    index = (out / "README.md").read_text()
    for item in planned:
        assert f"git am $DIST/{item.name}/*.patch" in index


def test_nothing_fork_only_is_exported(tmp_path):
    """The command line exports (it refuses fork-only words), and a grep of what it wrote finds
    no word true only in this repository."""
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "export_upstream_pr.py"),
            "-o",
            str(out),
            "--author",
            AUTHOR,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    found = []
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".patch":
            message = text.split("\n---\n", 1)[0]
            lines = message.splitlines()[4:] + [
                line[1:]
                for line in text.splitlines()
                if line.startswith("+") and not line.startswith("+++ ")
            ]
        else:
            lines = text.splitlines()
        for line in lines:
            for word in FORK_WORDS:
                if path.suffix == ".md" and word in ("upstream's", "2.14"):
                    continue
                if word.lower() in line.lower():
                    found.append(f"{path.relative_to(out)}: {word!r}: {line.strip()}")
    assert not found, "\n".join(found)


def test_fork_only_words_are_refused_with_their_place(tmp_path):
    root = _copy_repo(tmp_path)
    test_file = root / RUNTIME / "test_mutable_selective_offload.py"
    test_file.write_text(
        test_file.read_text()
        + "\n# figures in docs/gpu-validation.md of the patched build\n"
    )
    with pytest.raises(pr.ExportError) as error:
        pr.export(tmp_path / "out", IDENTITY, root=root)
    message = str(error.value)
    assert (
        "test_mutable_selective_offload.py:" in message and "gpu-validation" in message
    )
    assert not (tmp_path / "out").exists()


# --- identity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "author",
    [
        "",
        "Ada Lovelace",
        "<ada@lovelace.dev>",
        "Seed e4d3161d maintainers <maintainers@users.noreply.h-seed-e4d3161d.example>",
        "Ada Lovelace <ada@example.com>",
        "Ada Lovelace <ada@mail.example.org>",
        "Ada Lovelace <ada@lovelace.example>",
        "Ada Lovelace <ada@lovelace.invalid>",
        "Ada Lovelace <ada@localhost>",
        "Ada Lovelace <noreply@lovelace.dev>",
        "Ada Lovelace <ada@noreply.lovelace.dev>",
        "Torch-TensorRT maintainers <ada@lovelace.dev>",
        "Your Name <ada@lovelace.dev>",
        "Ada Lovelace <ada@users.noreply.github.com.example>",
    ],
)
def test_placeholder_identities_are_refused(author):
    with pytest.raises(pr.ExportError):
        pr.parse_identity(author)


@pytest.mark.parametrize(
    "author",
    [
        AUTHOR,
        "Ada Lovelace <12345+adal@users.noreply.github.com>",
        "Zoë Ó <zo@ex.co.uk>",
    ],
)
def test_real_identities_are_accepted(author):
    name, mail = pr.parse_identity(author)
    assert f"{name} <{mail}>" == author


def _run_cli(tmp_path, gitconfig: str, *args):
    config = tmp_path / "gitconfig"
    config.write_text(gitconfig)
    env = dict(os.environ, GIT_CONFIG_GLOBAL=str(config), GIT_CONFIG_NOSYSTEM="1")
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "export_upstream_pr.py"),
            "-o",
            str(tmp_path / "out"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def test_cli_refuses_a_placeholder_git_identity_and_writes_nothing(tmp_path):
    placeholder = (
        "[user]\n\tname = Seed e4d3161d maintainers\n"
        "\temail = maintainers@users.noreply.h-seed-e4d3161d.example\n"
    )
    result = _run_cli(tmp_path, placeholder)
    assert result.returncode == 1
    assert result.stderr.startswith("error: git config identity refused")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    result = _run_cli(tmp_path, "")
    assert result.returncode == 1 and "no author" in result.stderr
    result = _run_cli(tmp_path, placeholder, "--author", "maintainers <m@lovelace.dev>")
    assert result.returncode == 1 and "placeholder word" in result.stderr


def test_identity_comes_from_git_config_without_author(tmp_path, monkeypatch):
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Ada Lovelace\n\temail = ada@lovelace.dev\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    assert pr.resolve_identity(None) == IDENTITY
    assert pr.resolve_identity("Grace Hopper <grace@hopper.dev>") == (
        "Grace Hopper",
        "grace@hopper.dev",
    )


# --- the grouping is data: new patches and files must be assigned ----------------------------


def _copy_repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    for part in ("patches", "docs/upstream", "tests/py"):
        shutil.copytree(ROOT / part, root / part)
    return root


def test_an_unassigned_patch_is_an_error(tmp_path):
    root = _copy_repo(tmp_path)
    shutil.copy(
        ROOT / "patches" / "0002-mutable-module-offload-only-when-asked.patch",
        root / "patches" / "0009-something-new.patch",
    )
    with (root / pr.SERIES).open("a") as f:
        f.write("0009-something-new.patch\n")
    with pytest.raises(pr.ExportError) as error:
        pr.plan(root=root)
    assert "0009-something-new.patch" in str(error.value)
    assert "PULL_REQUESTS" in str(error.value)


@pytest.mark.parametrize("name", ["test_mutable_other.py", "mutable_helpers.py"])
def test_an_unassigned_test_file_is_an_error(tmp_path, name):
    root = _copy_repo(tmp_path)
    (root / RUNTIME / name).write_text("")
    with pytest.raises(pr.ExportError) as error:
        pr.plan(root=root)
    assert f"{RUNTIME}/{name} belongs to no pull request" in str(error.value)


def test_a_pull_request_without_its_patch_is_skipped_with_a_message(tmp_path):
    root = _copy_repo(tmp_path)
    for p in root.glob("patches/0005-*.patch"):
        p.unlink()
    (root / RUNTIME / "test_mutable_fast_refit.py").unlink(missing_ok=True)
    series = root / pr.SERIES
    series.write_text(
        "".join(
            line for line in series.read_text().splitlines(True) if "0005-" not in line
        )
    )
    planned, skipped = pr.plan(root=root)
    assert "fast-refit" not in [i.name for i in planned]
    (message,) = [s for s in skipped if s.startswith("fast-refit")]
    assert "no patch 0005-*.patch in patches/series" in message
    assert "test_mutable_fast_refit.py does not exist" in message


def test_fast_refit_is_exported_once_patch_and_test_are_there(tmp_path):
    root = _copy_repo(tmp_path)
    present = [p.name for p in pr.read_series(root / pr.SERIES)]
    if not any(n.startswith("0005-") for n in present):
        # Stand-in for the patch: an empty-context change of one comment line
        patch = root / "patches" / "0005-fast-refit-stand-in.patch"
        patch.write_text(
            "Description: stand-in\nAuthor: x\nLast-Update: 2026-11-24\n---\n"
            + _stand_in_diff()
        )
        with (root / pr.SERIES).open("a") as f:
            f.write(patch.name + "\n")
    test_file = root / RUNTIME / "test_mutable_fast_refit.py"
    if not test_file.exists():
        test_file.write_text("import pytest\n")
    planned, skipped = pr.plan(root=root)
    item = [i for i in planned if i.name == "fast-refit"]
    assert item and item[0].pr.stacked_on == "refit-decision"
    assert not [s for s in skipped if s.startswith("fast-refit")]
    test_file.unlink()
    with pytest.raises(pr.ExportError) as error:
        pr.plan(root=root)
    assert "fast-refit" in str(error.value) and "test_mutable_fast_refit.py" in str(
        error.value
    )


def _stand_in_diff() -> str:
    """A diff that adds one file, so it applies anywhere."""
    return pr.new_file_diff("py/torch_tensorrt/_stand_in.py", "# stand-in\n")


# --- the code applies ------------------------------------------------------------------------


def test_each_pull_request_applies_to_a_release_tree(exported, tmp_path):
    """git am needs upstream (below); here each pull request's code and test mails go, after
    those of the pull requests it is stacked on, onto the 2.14.0 wheel's sources."""
    out, planned, _ = exported
    with zipfile.ZipFile(base_wheel("torch_tensorrt", "2.14.0")) as zf:
        members = [n for n in zf.namelist() if n.startswith("torch_tensorrt/")]
        zf.extractall(tmp_path / "wheel" / "py", members=members)
    for item in planned:
        tree = tmp_path / item.name
        shutil.copytree(tmp_path / "wheel", tree)
        subprocess.run(["git", "init", "-q", str(tree)], check=True)
        for step in _stack(planned, item):
            _apply_mails(tree, out / step.name, "--exclude=docsrc/*", f"{item.name}: ")
        for test in item.tests:
            assert (tree / test.path).read_text() == (ROOT / test.path).read_text()


def test_each_pull_request_applies_to_upstream_with_git_am(tmp_path):
    if not UPSTREAM:
        pytest.skip(
            "no upstream tree: set TORCHTRT_UPSTREAM_GIT to a clone of pytorch/TensorRT "
            f"holding {pr.BASE_COMMIT}"
        )
    planned, _ = pr.export(
        tmp_path / "out", IDENTITY, upstream=Path(UPSTREAM), forbid_fork_only=False
    )
    for item in planned:
        text = (tmp_path / "out" / item.name / "PR.md").read_text()
        assert (
            f"`{pr.BASE_COMMIT}`; the commits below apply there with `git am`" in text
        )


# --- upstream's test layout ------------------------------------------------------------------


def test_init_files_are_those_on_the_path_to_the_gpu_tests():
    """Upstream has __init__.py in tests/py/dynamo and tests/py/dynamo/runtime (not in tests/
    or tests/py): the same here, empty, and no other."""
    assert set(_our_init_files()) == OUR_INIT_FILES
    assert all(text == "" for text in _our_init_files().values())


def test_init_files_match_upstream(upstream_tree_files):
    for directory in PACKAGE_DIRS:
        path = f"{directory}/__init__.py"
        assert (path in OUR_INIT_FILES) == (path in upstream_tree_files), path
        if path in upstream_tree_files:
            assert upstream_tree_files[path] == b"", path


def test_the_import_check_finds_broken_relative_imports(tmp_path):
    """The check below can fail: a missing name, a missing module, a missing __init__.py."""
    runtime = tmp_path / RUNTIME
    runtime.mkdir(parents=True)
    (tmp_path / "tests/py/dynamo/__init__.py").write_text("")
    (runtime / "helpers.py").write_text("VALUE = 1\n")
    (runtime / "test_a.py").write_text(
        "from .helpers import VALUE\nfrom .helpers import NOPE\nfrom .gone import X\n"
        "from ..testing_utilities import Y\n"
    )
    problems = unresolved_relative_imports(tmp_path, runtime / "test_a.py")
    assert len(problems) == 4, problems
    assert all(f"{RUNTIME} has no __init__.py" in p for p in problems)
    (runtime / "__init__.py").write_text("")
    problems = unresolved_relative_imports(tmp_path, runtime / "test_a.py")
    assert [p.split(": ", 1)[1] for p in problems] == [
        f"{RUNTIME}/helpers.py defines no NOPE",
        "no module .gone",
        "no module ..testing_utilities",
    ]


def test_relative_imports_resolve_in_each_pull_request(exported, tmp_path):
    """Each pull request's test files, laid out with those of the pull requests it is stacked on
    and this repository's __init__.py files: every relative import resolves."""
    out, planned, _ = exported
    for item in planned:
        tree = tmp_path / item.name
        _lay_out(tree, out, _stack(planned, item), _our_init_files())
        for test in item.tests:
            assert unresolved_relative_imports(tree, tree / test.path) == [], item.name


def test_each_pull_request_collects(exported, plugin_dir, repo_collection, tmp_path):
    """pytest collects each pull request's laid-out test files, imports run to the end (CUDA
    faked), with as many tests as this repository's files; a broken import fails it."""
    out, planned, _ = exported
    for item in planned:
        tree = tmp_path / item.name
        _lay_out(tree, out, _stack(planned, item), _our_init_files())
        files = [t.path for t in item.tests]
        result = _collect(tree, plugin_dir, files)
        assert result.returncode == 0, f"{item.name}:\n{result.stdout}{result.stderr}"
        counts = _collected(result.stdout)
        assert counts == {f: repo_collection[f] for f in files}, item.name
        assert all(counts.values())
    broken = tmp_path / planned[-1].name / planned[-1].tests[0].path
    broken.write_text(
        broken.read_text() + "\nfrom .test_mutable_offload import _no_such\n"
    )
    result = _collect(
        tmp_path / planned[-1].name, plugin_dir, [planned[-1].tests[0].path]
    )
    assert result.returncode != 0 and "_no_such" in result.stdout + result.stderr


def test_each_pull_request_collects_in_upstreams_layout(
    exported, plugin_dir, repo_collection, upstream_tree_files, tmp_path
):
    """Upstream's __init__.py and conftest files and pytest configuration at the base commit,
    each pull request's test files, and upstream's L2 runtime invocation (cd tests/py/dynamo;
    -k "not test_000_ and not test_001_"; addopts cleared: they need pytest-xdist) with
    --collect-only: no error, every test collected."""
    out, planned, _ = exported
    for item in planned:
        tree = tmp_path / item.name
        tree.mkdir()
        for path, data in upstream_tree_files.items():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_bytes(data)
        _lay_out(tree, out, _stack(planned, item), {})
        files = [t.path for t in item.tests]
        for test in files:
            assert unresolved_relative_imports(tree, tree / test) == [], item.name
        result = _collect(
            tree,
            plugin_dir,
            files,
            ["-o", "addopts=", "-k", "not test_000_ and not test_001_"],
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{item.name}:\n{output}"
        assert "PytestUnknownMarkWarning" not in output
        counts = _collected(result.stdout)
        assert counts == {f: repo_collection[f] for f in files}, item.name
