"""The benchmark script imports, parses its arguments and sizes its models without a GPU."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_mttm.py"
spec = importlib.util.spec_from_file_location("bench_mttm", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_mttm"] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


def _site(tmp_path, name):
    """A site directory that holds a torch_tensorrt package, as --build requires."""
    (tmp_path / name / "torch_tensorrt").mkdir(parents=True)
    (tmp_path / name / "torch_tensorrt" / "__init__.py").write_text("")
    return str(tmp_path / name)


def test_parse_builds_and_defaults(tmp_path):
    a, bc = _site(tmp_path, "a"), _site(tmp_path, "b=c")
    args = bench.parse_args(["--build", f"upstream={a}", "--build", f"patched={bc}"])
    assert args.builds == [("upstream", a), ("patched", bc)]
    assert args.sizes == [100.0, 750.0, 3072.0]
    assert args.offload == ["off", "on"]
    assert args.iters >= 50


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--build", "nameonly"],
        ["--build", "=/site"],
        ["--build", "a=/x", "--iters", "0"],
        ["--build", "a=/x", "--processes", "0"],
        ["--build", "a=/x", "--worker-timeout", "0"],
    ],
)
def test_bad_arguments_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2


@pytest.mark.parametrize("size", [100, 750, 3072])
def test_model_dims_hit_the_size_with_an_embedding_heavy_model(size):
    dims = bench.model_dims(size)
    assert abs(dims.bytes / bench.MIB - size) / size < 0.05
    assert dims.vocab * dims.hidden >= 2 / 3 * dims.parameters


def test_table_has_ratio_column_and_reports_errors():
    results = [
        {"build": "upstream", "size": 750.0, "offload": "off", "forward_ms": 2.0},
        {"build": "patched", "size": 750.0, "offload": "off", "forward_ms": 1.0},
        {"build": "patched", "size": 100.0, "offload": "on", "error": "boom"},
    ]
    text = bench.table(results, [("upstream", "/a"), ("patched", "/b")])
    assert "| 750 MiB | off | forward (ms, median) | 2 | 1 | 0.5 |" in text
    assert "patched failed | boom" in text


def test_a_worker_out_of_time_keeps_the_figures_it_printed(monkeypatch):
    printed = b'{"compile_s": 1.5}\nTensorRT log line\n{"compile_s": 1.5, "forward_ms": 0.4}\n'

    def run_past_the_limit(cmd, **kwargs):
        raise bench.subprocess.TimeoutExpired(cmd, kwargs["timeout"], output=printed)

    monkeypatch.setattr(bench.subprocess, "run", run_past_the_limit)
    result = bench.run_worker("/site", "", 3072.0, "off", timeout=180)
    assert result["compile_s"] == 1.5 and result["forward_ms"] == 0.4
    assert result["error"] == "worker ran past 180 s"
    text = bench.table(
        [dict(result, build="upstream", size=3072.0, offload="off")],
        [("upstream", "/site")],
    )
    assert "| 3072 MiB | off | forward (ms, median) | 0.4 |" in text
    assert "upstream failed | worker ran past" in text


def test_several_processes_give_median_and_range_per_build():
    results = [
        {"build": b, "size": 750.0, "offload": "off", "forward_ms": v}
        for b, v in [
            ("upstream", 0.5),
            ("patched", 0.4),
            ("patched", 0.6),
            ("upstream", 0.3),
            ("upstream", 0.4),
            ("patched", 0.8),
        ]
    ]
    text = bench.table(results, [("upstream", "/a"), ("patched", "/b")])
    assert "| forward (ms, median) | 0.4 (0.3–0.5) | 0.6 (0.4–0.8) | 1.5 |" in text
    assert "compile (s)" not in text  # measured by neither build: no row


def test_orchestrator_alternates_builds_and_passes_worker_flags(monkeypatch, tmp_path):
    calls = []

    a, b = _site(tmp_path, "a"), _site(tmp_path, "b")

    def fake_worker(site, extra_path, size, offload, flags=(), timeout=0):
        calls.append((site, size, offload, list(flags), timeout))
        return {"forward_ms": 1.0 if site == a else 0.5}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    out = tmp_path / "bench.json"
    argv = ["--build", f"upstream={a}", "--build", f"patched={b}", "--sizes", "750"]
    argv += ["--offload", "off", "--processes", "3", "--forward-only"]
    argv += ["--worker-timeout", "90", "--json", str(out)]
    assert bench.main(argv) == 0
    assert [c[0] for c in calls] == [a, b, b, a, a, b]
    assert all("--forward-only" in c[3] and c[4] == 90 for c in calls)
    saved = bench.json.loads(out.read_text())
    assert len(saved["results"]) == 6


def test_memory_breakdown_runs_one_worker_per_build_and_setting(
    monkeypatch, capsys, tmp_path
):
    calls = []
    b = _site(tmp_path, "b")

    def fake_worker(site, extra_path, size, offload, flags=(), timeout=0):
        calls.append((site, size, offload, list(flags)))
        return {"after_compile": {"in_use_mib": 1.0}}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    argv = ["--build", f"patched={b}", "--sizes", "750", "100", "--memory-breakdown"]
    assert bench.main(argv) == 0
    assert [(c[1], c[2]) for c in calls] == [(750.0, "off"), (750.0, "on")]
    assert all("--memory-breakdown" in c[3] for c in calls)
    assert "patched offload=on:" in capsys.readouterr().out


def test_a_failed_worker_keeps_its_figures_and_says_how_it_failed(monkeypatch):
    def fail_after_a_phase(cmd, **kwargs):
        return bench.subprocess.CompletedProcess(
            cmd,
            1,
            stdout='{"compile_s": 2.0}\n',
            stderr="Traceback\nRuntimeError: boom\n",
        )

    monkeypatch.setattr(bench.subprocess, "run", fail_after_a_phase)
    result = bench.run_worker("/site", "", 750.0, "on")
    assert result == {"compile_s": 2.0, "error": "Traceback | RuntimeError: boom"}
