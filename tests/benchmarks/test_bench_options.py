"""benchmarks/bench_mttm.py: each wrong combination of options gets one error, a failed worker fails the run."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_mttm.py"


def _run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def site(tmp_path):
    """A site directory holding a torch_tensorrt package that cannot benchmark anything."""
    (tmp_path / "torch_tensorrt").mkdir()
    (tmp_path / "torch_tensorrt" / "__init__.py").write_text(
        "raise ImportError('fake')\n"
    )
    return str(tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--build", "a=/nonexistent"], "holds no torch_tensorrt package"),
        (["--build", "a"], "--build takes NAME=SITE_DIR"),
        (["--memory-breakdown", "--decision-seeds", "3"], "choose one of"),
        (["--aligned-lookup", "--processes", "3"], "apply to the lifecycle tables"),
        (["--refit-costs", "--forward-only"], "apply to the lifecycle tables"),
        (["--refits", "5"], "apply to --refit-costs only"),
        (["--runtimes", "python"], "apply to --refit-costs only"),
        (["--refit-costs", "--refits", "-1"], "must not be negative"),
    ],
)
def test_bad_options_get_one_error(site, args, message):
    if "--build" not in args:
        args = ["--build", f"a={site}", *args]
    result = _run(*args)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr


@pytest.mark.parametrize(
    "mode", [[], ["--refit-costs", "--runtimes", "python"], ["--aligned-lookup"]]
)
def test_a_failed_worker_fails_the_run(site, tmp_path, mode):
    out = tmp_path / "bench.json"
    result = _run(
        "--build",
        f"a={site}",
        "--sizes",
        "100",
        "--offload",
        "off",
        "--json",
        str(out),
        *mode,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert out.is_file() and '"error"' in out.read_text()
