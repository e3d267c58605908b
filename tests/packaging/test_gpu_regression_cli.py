"""ci/gpu-regression on the CPU: its options, its refusals, and the verdicts it reaches.

The job itself needs a GPU. Here: every bad input stops it with one line and a non-zero exit
before anything is written, it refuses to run without CUDA, the guard list names cases that the
GPU suite has, and the functions that judge pytest's JUnit XML fail a run when they must (a
guard that passes on the release, a regression of an upstream case, a skip that is not allowed).
"""

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "ci" / "gpu-regression"


def _load():
    loader = importlib.machinery.SourceFileLoader("gpu_regression", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_regression", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_regression"] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


gr = _load()


def run(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def assert_refused(out, status, *words):
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("ci/gpu-regression: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert out.stdout == ""


def test_help_names_every_option():
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for option in [
        "--rtx",
        "--base-version",
        "--base-wheel",
        "--patched-wheel",
        "--release-wheel",
        "--release-site",
        "--python",
        "--extra-path",
        "--no-deps",
        "--upstream",
        "--workdir",
        "--junit-dir",
        "--jobs",
        "--xdist",
        "--suite-timeout",
        "Exit status",
    ]:
        assert option in out.stdout, option


def test_refuses_to_run_without_cuda(tmp_path):
    # This machine's torch has no CUDA: one message, exit 3, nothing built or written
    out = run("--python", sys.executable, "--workdir", tmp_path / "work")
    assert_refused(
        out, 3, "CUDA is not available", "torch.cuda.is_available() is False"
    )
    assert not (tmp_path / "work").exists()


def test_refuses_an_interpreter_without_torch(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")],
        check=True,
    )
    out = run("--python", tmp_path / "bare" / "bin" / "python")
    assert_refused(out, 3, "cannot import torch")


TAGS = "cp312-cp312-manylinux_2_28_x86_64.whl"


@pytest.fixture
def inputs(tmp_path):
    """Paths for BAD_INPUTS: wheel names are checked before their contents, so the files that
    are not zip archives stop the job on their name, or else on being no zip archive."""
    files = {
        "std211": f"torch_tensorrt-2.11.0-{TAGS}",
        "rtx211": f"torch_tensorrt_rtx-2.11.0-{TAGS}",
        "rtx213": f"torch_tensorrt_rtx-2.13.0-{TAGS}",
        "patched": f"torch_tensorrt_rtx-2.11.0+offload.00000000-{TAGS}",
        "text": "not-a-wheel.txt",
    }
    paths = {"tmp": tmp_path}
    for key, name in files.items():
        paths[key] = tmp_path / name
        paths[key].write_bytes(b"not a zip")
    # Zip archives: one without a wheel's name, one patched wheel without PATCHES.json
    paths["plain"] = tmp_path / "plain.whl"
    paths["unrecorded"] = (
        tmp_path / f"torch_tensorrt_rtx-2.11.0+offload.11111111-{TAGS}"
    )
    for key in ("plain", "unrecorded"):
        with zipfile.ZipFile(paths[key], "w") as zf:
            zf.writestr("torch_tensorrt/__init__.py", "")
    (tmp_path / "site" / "torch_tensorrt").mkdir(parents=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "leftover").write_text("")
    return paths


BAD_INPUTS = [
    (["--base-version", "9.9.9"], "supported releases: 2.11.0"),
    (["--base-wheel", "{tmp}/missing.whl"], "no such file"),
    (["--base-wheel", "{text}"], "not a wheel file name"),
    (["--rtx", "--base-wheel", "{std211}"], "drop --rtx"),
    (["--base-wheel", "{rtx211}"], "add --rtx"),
    (
        ["--rtx", "--base-version", "2.11.0", "--base-wheel", "{rtx213}"],
        "is release 2.13.0",
    ),
    (["--rtx", "--base-wheel", "{rtx211}"], "not a valid wheel"),
    (["--rtx", "--release-wheel", "{rtx211}"], "not a valid wheel"),
    (["--release-wheel", "x.whl", "--release-site", "{tmp}"], "not allowed with"),
    (["--release-site", "{tmp}/missing"], "no such directory"),
    (["--rtx", "--patched-wheel", "{rtx211}"], "no local version label"),
    (["--patched-wheel", "{plain}"], "not a wheel file name"),
    (["--rtx", "--patched-wheel", "{unrecorded}"], "records no PATCHES.json"),
    (["--patched-wheel", "{patched}"], "not torch_tensorrt (see --rtx)"),
    (["--extra-path", "{tmp}/missing"], "no such directory"),
    (["--extra-path", "{tmp}/site"], "would shadow the build under test"),
    (["--upstream", "{tmp}/missing"], "no such file or directory"),
    (["--workdir", "{tmp}/full"], "is not empty and was not made by ci/gpu-regression"),
    (["--junit-dir", "{tmp}/full"], "is not empty"),
    (["--workdir", "{text}"], "is not a directory"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--xdist", "-1"], "--xdist must not be negative"),
    (["--suite-timeout", "0"], "--suite-timeout must be at least 1"),
    (["--jobs", "two"], "invalid int value"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--python", "{tmp}/no-such-python"], "no such interpreter"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path, inputs, args, message
):
    args = [a.format(**inputs) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    out = run(
        "--python", sys.executable, *args
    )  # a --python in args comes last and wins
    assert_refused(out, 2, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_upstream_source_without_the_tag_or_the_files_is_refused(tmp_path):
    repo = _upstream_repo(tmp_path / "repo", tag="v2.13.0")
    with pytest.raises(
        gr.Refusal, match="has no tests/py/dynamo/runtime/test_mutable_torchtrt"
    ):
        gr.check_upstream_source(repo, "v2.11.0")
    gr.check_upstream_source(repo, "v2.13.0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(gr.Refusal, match="neither a git repository nor a directory"):
        gr.check_upstream_source(tmp_path / "empty", "v2.13.0")


# ------------------------------------------------------------------------------------------
# The guard list and the suite it selects from


COLLECT_STUB = '''
"""Collection only: torch_tensorrt faked, CUDA said to be available."""
import sys, types
from unittest import mock
import torch
torch.cuda.is_available = lambda: True
class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = mock.MagicMock(name=self.__name__ + "." + name)
        setattr(self, name, value)
        return value
for name in ["torch_tensorrt", "torch_tensorrt.dynamo", "torch_tensorrt.dynamo.utils",
             "torch_tensorrt.dynamo.runtime",
             "torch_tensorrt.dynamo.runtime._MutableTorchTensorRTModule"]:
    module = _Stub(name)
    module.__path__ = []
    sys.modules[name] = module
'''


@pytest.fixture(scope="module")
def suite_ids(tmp_path_factory):
    """Node ids of the GPU suite, collected here with torch_tensorrt faked."""
    stub = tmp_path_factory.mktemp("stub")
    (stub / "collect_stub.py").write_text(COLLECT_STUB)
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "collect_stub"]
    cmd += ["-p", "no:cacheprovider", gr.SUITE_DIR]
    env = {**os.environ, "PYTHONPATH": str(stub)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    ids = {line for line in out.stdout.splitlines() if "::" in line}
    assert out.returncode == 0 and ids, out.stdout + out.stderr
    return ids


def test_every_guard_and_the_lone_case_are_in_the_suite(suite_ids):
    guards = gr.read_guards()
    assert len(guards) == len(set(guards)) > 0
    missing = [g for g in guards + gr.ALONE if g not in suite_ids]
    assert not missing, f"not collected from {gr.SUITE_DIR}: {missing}"
    assert {g.split("::")[0] for g in guards} == {
        gr.SUITE_DIR + "/test_mutable_offload.py",
        gr.SUITE_DIR + "/test_mutable_refit_decision.py",
        gr.SUITE_DIR + "/test_mutable_fast_refit_attacks.py",
    }


# ------------------------------------------------------------------------------------------
# Verdicts, from the JUnit XML of real pytest runs


CASES = """
import pytest

def test_passes():
    pass

def test_fails():
    assert False

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n == 1

def test_skipped_allowed():
    pytest.skip("The Python runtime cannot serialize a MutableTorchTensorRTModule")

def test_skipped_other():
    pytest.skip("could not import 'transformers'")

@pytest.fixture
def broken():
    raise RuntimeError("setup")

def test_errors(broken):
    pass
"""


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    """The Outcome of a real pytest run of CASES, through ci/gpu-regression's Runner."""
    root = tmp_path_factory.mktemp("runs")
    (root / "pkg").mkdir()
    (root / "pkg" / "test_cases.py").write_text(CASES)
    build = gr.Build("release", sys.executable, [], root, "0", "test build")
    run_ = gr.Run("cases", "cases", build, ["pkg/test_cases.py"], root, "")
    gr.Runner(root, root / "tmp", 120)(run_)
    return run_.outcome


def test_junit_results_are_read_per_case(outcome):
    assert not outcome.problem
    key = gr.case_key
    assert outcome.cases == {
        key("pkg/test_cases.py::test_passes"): "passed",
        key("pkg/test_cases.py::test_fails"): "failed",
        key("pkg/test_cases.py::test_param[1]"): "passed",
        key("pkg/test_cases.py::test_param[2]"): "failed",
        key("pkg/test_cases.py::test_skipped_allowed"): "skipped",
        key("pkg/test_cases.py::test_skipped_other"): "skipped",
        key("pkg/test_cases.py::test_errors"): "error",
    }
    assert outcome.seconds > 0


def test_guards_must_all_fail_on_the_release(outcome):
    failing = ["pkg/test_cases.py::test_fails", "pkg/test_cases.py::test_param[2]"]
    assert gr.judge_guards(outcome, failing) == []
    problems = gr.judge_guards(outcome, failing + ["pkg/test_cases.py::test_passes"])
    assert problems == [
        "guard passed on the release, it must fail: pkg/test_cases.py::test_passes"
    ]
    # An error, a skip or a case that did not run is no proof either
    for node_id, status in [
        ("pkg/test_cases.py::test_errors", "error"),
        ("pkg/test_cases.py::test_skipped_other", "skipped"),
        ("pkg/test_cases.py::test_renamed", "not run"),
    ]:
        assert gr.judge_guards(outcome, [node_id]) == [
            f"guard {status} on the release, it must fail: {node_id}"
        ]
    assert gr.judge_guards(gr.Outcome(problem="pytest wrote no JUnit XML"), failing)


def test_green_means_no_failure_error_or_unlisted_skip(outcome):
    problems = gr.judge_green(outcome, gr.ALLOWED_SKIPS)
    assert len(problems) == 4, problems
    assert any(p.startswith("failed: ") and "test_fails" in p for p in problems)
    assert any(p.startswith("error: ") and "test_errors" in p for p in problems)
    assert any("not allowed" in p and "test_skipped_other" in p for p in problems)
    assert not any("test_skipped_allowed" in p for p in problems)
    green = gr.Outcome(
        cases={"a::ok": "passed", "a::s": "skipped"},
        skip_reasons={"a::s": gr.ALLOWED_SKIPS[0]},
    )
    assert gr.judge_green(green, gr.ALLOWED_SKIPS) == []
    only_skips = gr.Outcome(cases={"a::s": "skipped"}, skip_reasons=green.skip_reasons)
    assert gr.judge_green(only_skips, gr.ALLOWED_SKIPS) == ["no case passed"]
    assert gr.judge_green(
        gr.Outcome(problem="stopped after 5 s (--suite-timeout)"), []
    ) == ["stopped after 5 s (--suite-timeout)"]


def test_upstream_no_worse_than_the_release():
    release = gr.Outcome(
        cases={"m::a": "passed", "m::b": "passed", "m::c": "failed", "m::d": "skipped"}
    )
    same = gr.Outcome(cases=dict(release.cases))
    assert gr.judge_no_worse(same, release) == []
    better = gr.Outcome(cases={**release.cases, "m::c": "passed"})
    assert gr.judge_no_worse(better, release) == []
    worse = gr.Outcome(cases={"m::a": "passed", "m::b": "failed", "m::c": "passed"})
    assert gr.judge_no_worse(worse, release) == [
        "passes on the release, failed on the patched build: m::b"
    ]
    missing = gr.Outcome(cases={"m::a": "passed"})
    assert gr.judge_no_worse(missing, release) == [
        "passes on the release, missing on the patched build: m::b"
    ]
    assert gr.judge_baseline(gr.Outcome(cases={"m::c": "failed"})) == [
        "no case passes on the release: no baseline to compare with"
    ]
    assert gr.judge_baseline(release) == []


def test_a_run_past_its_time_is_stopped_and_fails(tmp_path):
    (tmp_path / "test_slow.py").write_text(
        "import time\ndef test_slow():\n    time.sleep(60)\n"
    )
    build = gr.Build("patched", sys.executable, [], tmp_path, "0", "test build")
    run_ = gr.Run("slow", "slow", build, ["test_slow.py"], tmp_path, "")
    gr.Runner(tmp_path, tmp_path / "tmp", 3)(run_)
    assert run_.outcome.problem == "stopped after 3 s (--suite-timeout)"
    assert run_.outcome.seconds < 50
    assert gr.judge_green(run_.outcome, []) == [run_.outcome.problem]


def test_a_guard_id_that_names_no_case_stops_the_run(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x():\n    assert False\n")
    build = gr.Build("release", sys.executable, [], tmp_path, "0", "test build")
    run_ = gr.Run("guards", "guards", build, ["test_x.py::test_renamed"], tmp_path, "")
    gr.Runner(tmp_path, tmp_path / "tmp", 120)(run_)
    assert "not found" in run_.outcome.problem, run_.outcome.problem
    assert gr.judge_guards(run_.outcome, ["test_x.py::test_renamed"]) == [
        run_.outcome.problem
    ]


def test_summary_table_and_result_line(outcome):
    problems = gr.judge_green(outcome, gr.ALLOWED_SKIPS)
    rows = [
        gr.Row("runtime (this repository)", "patched", outcome, "all pass", problems),
        gr.Row("guards", "release", outcome, "all 1 fail", []),
    ]
    text = gr.summary_text(["# GPU regression"], rows, ["- a note"])
    lines = text.splitlines()
    assert (
        "| suite | build | passed | failed | skipped | time | expected | verdict |"
        in lines
    )
    row = next(line for line in lines if line.startswith("| runtime"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["runtime (this repository)", "patched", "2", "3", "2"]
    assert cells[6:] == ["all pass", "FAIL"]
    assert next(line for line in lines if line.startswith("| guards")).endswith(
        "| PASS |"
    )
    assert "- a note" in lines
    assert lines[-1] == "result: FAIL"
    passing = gr.summary_text([], rows[1:], [])
    assert passing.splitlines()[-1] == "result: PASS"


# ------------------------------------------------------------------------------------------
# Upstream's tests: from git at the tag, or from a directory; hub downloads deselected


UPSTREAM_MTTM = """
import pytest

def test_offline():
    pass

@pytest.mark.unit
def test_resnet18():
    model = models.resnet18(pretrained=True)

class TestBert:
    def test_bert(self):
        model = BertModel.from_pretrained("bert-base-uncased")

    def test_local(self):
        pass
"""


def _upstream_repo(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    for rel in gr.UPSTREAM_TESTS.values():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(UPSTREAM_MTTM)
    (path / "tests/py/dynamo/conftest.py").write_text("")

    def git(*args):
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "tests")
    git("tag", tag)
    # The work tree moves on after the tag: the tag's files must be the ones used
    for rel in gr.UPSTREAM_TESTS.values():
        (path / rel).write_text("after the tag\n")
    return path


def test_upstream_tests_come_from_the_tag_with_hub_cases_deselected(tmp_path):
    repo = _upstream_repo(tmp_path / "repo", tag="v2.11.0")
    tests = gr.fetch_upstream_tests(repo, "v2.11.0", tmp_path / "out")
    for rel in gr.UPSTREAM_TESTS.values():
        assert (tmp_path / "out" / rel).read_text() == UPSTREAM_MTTM
    assert (tmp_path / "out" / "tests/py/dynamo/conftest.py").is_file()
    assert tests.origin == f"git {repo} at v2.11.0"
    mttm = gr.UPSTREAM_TESTS["mttm"]
    assert tests.deselected["mttm"] == [
        f"{mttm}::test_resnet18",
        f"{mttm}::TestBert::test_bert",
    ]


def test_upstream_tests_from_a_directory_are_used_as_they_are(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for rel in gr.UPSTREAM_TESTS.values():
        (flat / Path(rel).name).write_text("def test_x():\n    pass\n")
    gr.check_upstream_source(flat, "v2.11.0")
    tests = gr.fetch_upstream_tests(flat, "v2.11.0", tmp_path / "out")
    assert "is not checked" in tests.origin
    assert tests.deselected == {"mttm": [], "refit": []}
    for rel in gr.UPSTREAM_TESTS.values():
        assert (tmp_path / "out" / rel).is_file()


def test_hub_detection_reads_each_test_body(tmp_path):
    source = textwrap.dedent("""
        PRETRAINED = "pretrained=True in a module string is not a test"

        def test_hub():
            torch.hub.load("x", "y")

        def test_weights_false():
            models.resnet18(pretrained=False)

        def helper():
            models.resnet18(pretrained=True)
        """)
    (tmp_path / "test_x.py").write_text(source)
    assert gr.hub_cases(tmp_path / "test_x.py") == ["test_hub"]


@pytest.fixture(scope="module")
def interpreter():
    """What ci/gpu-regression learns of this interpreter (no CUDA here)."""
    return gr.probe(sys.executable, [])


# ------------------------------------------------------------------------------------------
# The whole job, with the GPU faked: the interpreter's probe says CUDA, the import check and
# the pytest runs are replaced; the build, the environments and upstream's tests are real.


@pytest.mark.parametrize("broken", [None, "guard passes", "upstream regression"])
def test_the_job_with_the_gpu_faked(
    tmp_path, monkeypatch, rtx_2_11_wheel, broken, interpreter
):
    info = dict(interpreter)
    info.update(torch="2.11.0+cu130", cuda=True, gpu="Fake GPU", xdist=True)
    monkeypatch.setattr(gr, "probe", lambda python, extra: info)
    monkeypatch.setattr(
        gr, "check_import", lambda build, log: setattr(build, "tensorrt", "TRT x")
    )
    guards = gr.read_guards()
    runs = []

    def fake_pytest(self, run):
        runs.append(run)
        cases = {"m::a": "passed"}
        if run.name == "guards-release":
            cases = {gr.case_key(g): "failed" for g in guards}
            if broken == "guard passes":
                cases[gr.case_key(guards[3])] = "passed"
        if broken == "upstream regression" and run.name == "upstream-refit-patched":
            cases = {"m::a": "failed"}
        run.outcome = gr.Outcome(cases=cases, seconds=1.0)
        return run

    monkeypatch.setattr(gr.Runner, "__call__", fake_pytest)
    repo = _upstream_repo(tmp_path / "upstream", tag="v2.11.0")
    work = tmp_path / "work"
    status = gr.main(
        ["--rtx", "--base-wheel", str(rtx_2_11_wheel), "--no-deps", "--jobs", "3"]
        + ["--upstream", str(repo), "--workdir", str(work), "--xdist", "2"]
    )
    summary = (work / "junit" / "summary.md").read_text()

    # Both builds installed, each in its own environment
    (built,) = work.glob("wheels/patched/*.whl")
    version = built.name.split("-")[1]
    assert version.startswith("2.11.0+offload.")
    installed = {
        env: [p.name for p in work.glob(f"envs/{env}/site/*.dist-info")]
        for env in ("patched", "release")
    }
    assert installed == {
        "patched": [f"torch_tensorrt_rtx-{version}.dist-info"],
        "release": ["torch_tensorrt_rtx-2.11.0.dist-info"],
    }
    # What ran where, the free-memory case last and alone
    by_name = {r.name: r for r in runs}
    assert [r.name for r in runs][-1] == "runtime-patched-alone"
    assert by_name["runtime-patched-alone"].args == ["-s"] + gr.ALONE
    assert by_name["guards-release"].args == ["-n", "2"] + guards
    assert by_name["guards-release"].build.label == "release"
    assert by_name["runtime-patched"].args[-1] == gr.SUITE_DIR
    assert by_name["upstream-mttm-release"].cwd == work / "upstream"
    mttm = by_name["upstream-mttm-patched"].args
    assert f"{gr.UPSTREAM_TESTS['mttm']}::test_resnet18" in mttm
    assert mttm[:2] == ["-p", "pytest_torchtrt_first"]

    assert "| build | patched |" in summary
    assert "Fake GPU, torch 2.11.0+cu130" in summary
    if broken is None:
        assert status == 0, summary
        assert summary.splitlines()[-1] == "result: PASS"
        assert summary.count("| PASS |") == 8
    else:
        assert status == 1
        assert summary.splitlines()[-1] == "result: FAIL"
        expected = {
            "guard passes": f"guard passed on the release, it must fail: {guards[3]}",
            "upstream regression": "passes on the release, failed on the patched build: m::a",
        }[broken]
        assert expected in summary


def test_a_build_installed_with_its_dependencies_gets_a_venv_that_sees_the_interpreter(
    tmp_path, interpreter
):
    # A wheel that depends on pytest, which the interpreter has: pip must count it as installed
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    metadata = (
        "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\nRequires-Dist: pytest\n"
    )
    tags = "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo_pkg/__init__.py", "")
        zf.writestr("demo_pkg-1.0.dist-info/METADATA", metadata)
        zf.writestr("demo_pkg-1.0.dist-info/WHEEL", tags)
        zf.writestr("demo_pkg-1.0.dist-info/RECORD", "")
    info = dict(interpreter)
    build = gr.install("patched", wheel, info, tmp_path, [], False, tmp_path / "log")
    assert build.python == str(tmp_path / "envs" / "patched" / "bin" / "python")
    installed = sorted(p.name for p in build.site.glob("*.dist-info"))
    assert installed == ["demo_pkg-1.0.dist-info"]  # pytest was not installed again
    code = "import demo_pkg, pytest, torch; print(demo_pkg.__file__, torch.__version__)"
    out = subprocess.run([build.python, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    where, version = out.stdout.split()
    assert Path(where).parent.parent == build.site
    assert version == info["torch"]


def test_wheels_and_release_must_fit_the_interpreter(
    tmp_path, monkeypatch, capsys, interpreter
):
    info = dict(interpreter)
    info.update(torch="2.11.0+cu130", cuda=True, gpu="Fake GPU")
    monkeypatch.setattr(gr, "probe", lambda python, extra: info)
    other = "cp39" if info["tag"] != "cp39" else "cp310"
    wheel = (
        tmp_path
        / f"torch_tensorrt_rtx-2.11.0+offload.1-{other}-{other}-manylinux_2_28_x86_64.whl"
    )
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(
            "torch_tensorrt_rtx-2.11.0+offload.1.dist-info/PATCHES.json", '{"a": 1}'
        )
    args = ["--rtx", "--patched-wheel", str(wheel), "--workdir", str(tmp_path / "w")]
    assert gr.main(args) == 2
    assert "is not for this interpreter" in capsys.readouterr().err
    info.update(torch="2.13.0+cu130")
    assert gr.main(args) == 3
    assert "release 2.11.0 is built for torch 2.11" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
