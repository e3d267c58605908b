"""The built wheel: name, metadata, RECORD, provenance, installability; and every bad input."""

import base64
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import RELEASES, ROOT, base_wheel, bpw, platform_wheel
from packaging.utils import parse_wheel_filename
from packaging.version import Version

MTTM = "torch_tensorrt/dynamo/runtime/_MutableTorchTensorRTModule.py"
VERSION_FILE = "torch_tensorrt/_version.py"


def _record_ok(zf: zipfile.ZipFile, info_dir: str) -> None:
    rows = list(csv.reader(zf.read(info_dir + "RECORD").decode().splitlines()))
    listed = {row[0] for row in rows}
    files = {n for n in zf.namelist() if not n.endswith("/")}
    assert listed == files, f"RECORD and archive differ: {listed ^ files}"
    for name, digest, size in rows:
        if name == info_dir + "RECORD":
            assert digest == "" and size == ""
            continue
        data = zf.read(name)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        assert digest == "sha256=" + expected.decode(), name
        assert int(size) == len(data), name


def _build(tmp_path: Path, **kwargs) -> Path:
    return bpw.build(tmp_path / "out", **kwargs)


@pytest.fixture(scope="module")
def rtx_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rtx")
    return bpw.build(out, base_wheel=str(base_wheel("torch_tensorrt_rtx", "2.11.0")))


def test_wheel_name_metadata_record_and_provenance(rtx_wheel, rtx_2_11_wheel):
    _, patches = bpw.series_for("2.11.0")
    label = bpw.local_label(patches)
    assert rtx_wheel.name == rtx_2_11_wheel.name.replace("2.11.0", f"2.11.0+{label}", 1)
    name, version, build_tag, tags = parse_wheel_filename(rtx_wheel.name)
    assert (name, version, build_tag) == (
        "torch-tensorrt-rtx",
        Version(f"2.11.0+{label}"),
        (),
    )
    assert tags == parse_wheel_filename(rtx_2_11_wheel.name)[3]
    info = f"torch_tensorrt_rtx-2.11.0+{label}.dist-info/"
    with zipfile.ZipFile(rtx_wheel) as new, zipfile.ZipFile(rtx_2_11_wheel) as old:
        _record_ok(new, info)
        old_meta = old.read("torch_tensorrt_rtx-2.11.0.dist-info/METADATA").decode()
        new_meta = new.read(info + "METADATA").decode()
        # Only the version changes: dependencies and everything else are upstream's
        assert new_meta == old_meta.replace(
            "Version: 2.11.0\n", f"Version: 2.11.0+{label}\n", 1
        )
        provenance = json.loads(new.read(info + bpw.PROVENANCE_FILE))
        assert provenance["base_wheel"] == rtx_2_11_wheel.name
        assert provenance["base_sha256"] == bpw.sha256_of(rtx_2_11_wheel)
        assert provenance["series"] == "2.11/series"
        # Named relative to patches/, in the order of the series file
        assert [(p["name"], p["sha256"]) for p in provenance["patches"]] == [
            (p.path.relative_to(ROOT / "patches").as_posix(), bpw.sha256_of(p.path))
            for p in patches
        ]
        assert provenance["patches"][1]["name"] == (
            "2.11/0002-mutable-module-offload-only-when-asked.patch"
        )
        changed = {
            n
            for n in old.namelist()
            if n.startswith("torch_tensorrt/")
            and not n.endswith("/")
            and old.read(n) != new.read(n)
        }
        # Exactly the files the patches name, and the version
        named = {n[len("py/") :] for p in patches for n in p.files()}
        assert {MTTM, "torch_tensorrt/dynamo/utils.py"} <= named
        assert changed == named | {VERSION_FILE}
        # __version__ is the installed version; the rest of _version.py is the release's
        assert new.read(VERSION_FILE).decode() == old.read(
            VERSION_FILE
        ).decode().replace(
            '__version__ = "2.11.0"\n', f'__version__ = "2.11.0+{label}"\n', 1
        )
        assert "offload_module_to_cpu: bool = _defaults.OFFLOAD_MODULE_TO_CPU" in (
            new.read(MTTM).decode()
        )


def test_wheel_installs_into_fresh_venv(rtx_wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(rtx_wheel)],
        check=True,
    )
    check = (
        "import importlib.metadata as m, pathlib, hashlib, base64, json;"
        "d = m.distribution('torch_tensorrt_rtx');"
        "bad = [str(f) for f in d.files if f.hash and base64.urlsafe_b64encode("
        "hashlib.sha256(f.read_binary()).digest()).rstrip(b'=').decode() != f.hash.value];"
        "src = d.locate_file('" + MTTM + "').read_text();"
        "print(json.dumps({'version': d.version, 'bad': bad,"
        " 'patched': 'def _offload_original_model' in src,"
        " 'provenance': d.read_text('PATCHES.json') is not None}))"
    )
    out = subprocess.run(
        [str(python), "-c", check], check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout)
    assert result["version"].startswith("2.11.0+offload.")
    assert result["bad"] == []
    assert result["patched"] and result["provenance"]


def _pip_wheel(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, **env)
    out = tmp_path / "wheelhouse"
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)],
        env=environ,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    "env,expected",
    [
        (
            {"USE_TRT_RTX": "1", "TORCHTRT_BASE_VERSION": "2.11.0"},
            "torch_tensorrt_rtx-2.11.0+",
        ),
        (
            {"USE_TRT_RTX": "0", "TORCHTRT_BASE_VERSION": "2.14.0"},
            "torch_tensorrt-2.14.0+",
        ),
    ],
    ids=["rtx-2.11.0", "trt-2.14.0"],
)
def test_pip_wheel_builds_patched_release(tmp_path, env, expected):
    result = _pip_wheel(tmp_path, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    wheels = list((tmp_path / "wheelhouse").glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name.startswith(expected), wheels
    info = wheels[0].name.split("-")[0] + "-" + wheels[0].name.split("-")[1]
    with zipfile.ZipFile(wheels[0]) as zf:
        _record_ok(zf, info + ".dist-info/")
        assert "def _offload_original_model" in zf.read(MTTM).decode()


# ------------------------------------------------------------------------------------------
# Bad inputs: one clear message, non-zero exit, no wheel


def test_pip_wheel_unsupported_version_fails_cleanly(tmp_path):
    result = _pip_wheel(tmp_path, TORCHTRT_BASE_VERSION="2.10.0")
    assert result.returncode != 0
    assert (
        "TORCHTRT_BASE_VERSION=2.10.0 is not supported" in result.stderr + result.stdout
    )
    assert not list(tmp_path.rglob("*.whl"))


def _environ_without_build_settings(**env) -> dict:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("USE_TRT_RTX", "TORCHTRT_BASE_VERSION", "TORCHTRT_BASE_WHEEL")
    }
    environ.update(env)
    return environ


def _cli(tmp_path: Path, *args, **env) -> subprocess.CompletedProcess:
    environ = _environ_without_build_settings(**env)
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "build_patched_wheel.py"),
            "-o",
            str(tmp_path / "out"),
            *args,
        ],
        env=environ,
        capture_output=True,
        text=True,
    )


def _assert_failed(result, *fragments, out: Path) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not list(out.rglob("*.whl")) and not list(out.rglob("*.part"))


def test_unsupported_version(tmp_path):
    result = _cli(tmp_path, "--base-version", "2.9.0")
    _assert_failed(result, "2.9.0 is not supported", "2.11.0, 2.12.1", out=tmp_path)


def test_unsupported_variant(tmp_path):
    result = _cli(tmp_path, "--base-version", "2.11.0", USE_TRT_RTX="maybe")
    _assert_failed(result, "USE_TRT_RTX='maybe'", out=tmp_path)


def test_no_network_and_no_local_wheel(tmp_path):
    result = _cli(
        tmp_path,
        "--base-version",
        "2.11.0",
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(tmp_path),
        PIP_CONFIG_FILE=os.devnull,
    )
    _assert_failed(
        result,
        "could not download torch-tensorrt==2.11.0",
        "TORCHTRT_BASE_WHEEL",
        out=tmp_path,
    )


def test_wheel_that_is_not_torch_tensorrt(tmp_path):
    fake = tmp_path / "numpy-2.0.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("numpy/__init__.py", "")
    result = _cli(tmp_path, "--base-wheel", str(fake))
    _assert_failed(result, "is not a Torch-TensorRT wheel", out=tmp_path / "out")


def test_wheel_with_wrong_digest(tmp_path, rtx_2_11_wheel):
    tampered = tmp_path / rtx_2_11_wheel.name
    shutil.copy(rtx_2_11_wheel, tampered)
    with zipfile.ZipFile(tampered, "a") as zf:
        zf.writestr("torch_tensorrt/extra.py", "print('not upstream')\n")
    result = _cli(tmp_path, "--base-wheel", str(tampered))
    _assert_failed(result, "differs from the official release", out=tmp_path / "out")


def test_wheel_and_variant_disagree(tmp_path, rtx_2_11_wheel):
    result = _cli(tmp_path, "--base-wheel", str(rtx_2_11_wheel), USE_TRT_RTX="0")
    _assert_failed(
        result,
        "is torch_tensorrt_rtx but the build asks for torch_tensorrt",
        out=tmp_path,
    )


WINDOWS_WHEEL = "torch_tensorrt-2.14.0-cp311-cp311-win_amd64.whl"


def test_wheel_for_another_platform(tmp_path):
    """An official wheel this interpreter does not install: refused unless --any-platform."""
    base = platform_wheel(WINDOWS_WHEEL)
    result = _cli(tmp_path, "--base-wheel", str(base))
    tags = bpw.interpreter_tags()
    _assert_failed(
        result,
        f"{WINDOWS_WHEEL} is for cp311-cp311-win_amd64, which this Python",
        f"its tags are {tags[0]} and {len(tags) - 1} more",
        out=tmp_path,
    )


def test_wheel_for_another_python(tmp_path):
    """The tags are checked before the file is read: a wheel named for another CPython."""
    ours = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    other = "cp39" if ours != "cp39" else "cp38"
    fake = tmp_path / f"torch_tensorrt-2.14.0-{other}-{other}-manylinux_2_28_x86_64.whl"
    fake.write_bytes(b"not read")
    result = _cli(tmp_path, "--base-wheel", str(fake))
    _assert_failed(
        result,
        f"is for {other}-{other}-manylinux_2_28_x86_64, which this Python",
        "the official wheel for it is torch_tensorrt-2.14.0-" + ours,
        out=tmp_path / "out",
    )


def test_source_date_epoch_that_is_not_a_number(tmp_path, rtx_2_11_wheel):
    result = _cli(
        tmp_path, "--base-wheel", str(rtx_2_11_wheel), SOURCE_DATE_EPOCH="yesterday"
    )
    _assert_failed(
        result, "SOURCE_DATE_EPOCH='yesterday' is not a whole number", out=tmp_path
    )


def test_patch_that_does_not_apply_names_patch_file_and_hunk(tmp_path, rtx_2_11_wheel):
    patches = tmp_path / "patches"
    shutil.copytree(ROOT / "patches", patches)
    broken = patches / "2.11" / "0002-mutable-module-offload-only-when-asked.patch"
    text = broken.read_text()
    # Change one context line of the refit_gm hunk: the patch must now be refused, not fuzzed
    line = "\n     def get_exported_program(self) -> torch.export.ExportedProgram:\n"
    assert text.count(line) == 1
    broken.write_text(text.replace(line, line.replace("get_exported", "get_exported_")))
    out = tmp_path / "out"
    with pytest.raises(bpw.BuildError) as error:
        bpw.build(out, base_wheel=str(rtx_2_11_wheel), patches_dir=patches)
    message = str(error.value)
    assert (
        "patch 0002-mutable-module-offload-only-when-asked.patch does not apply"
        in message
    )
    assert "py/torch_tensorrt/dynamo/runtime/_MutableTorchTensorRTModule.py" in message
    assert "hunk #6 (@@ -312,5 +321,13 @@" in message, message
    assert not list(out.rglob("*.whl")) if out.exists() else True


def test_patch_reported_applied_but_changing_nothing_is_refused(
    tmp_path, rtx_2_11_wheel
):
    patches = tmp_path / "patches"
    (patches / "2.11").mkdir(parents=True)
    noop = patches / "2.11" / "0001-noop.patch"
    noop.write_text(
        "Description: x\n---\n"
        "diff --git a/py/torch_tensorrt/_version.py b/py/torch_tensorrt/_version.py\n"
    )
    (patches / "2.11" / "series").write_text("0001-noop.patch\n")
    with pytest.raises(bpw.BuildError) as error:
        bpw.build(tmp_path / "out", base_wheel=str(rtx_2_11_wheel), patches_dir=patches)
    assert "0001-noop.patch" in str(error.value)


# ------------------------------------------------------------------------------------------
# Choosing the base release


def test_choose_version_prefers_the_installed_torch_line():
    releases = {v: {} for v in ("2.11.0", "2.12.1", "2.13.0", "2.14.0")}
    assert bpw.choose_version(releases, None, "2.12.0+cu130") == "2.12.1"
    assert bpw.choose_version(releases, None, "2.13.0") == "2.13.0"
    assert bpw.choose_version(releases, None, "2.15.1") == "2.14.0"  # no match: newest
    assert bpw.choose_version(releases, None, None) == "2.14.0"
    assert bpw.choose_version(releases, "2.11.0", "2.13.0") == "2.11.0"  # explicit wins


def test_choose_variant():
    assert bpw.choose_variant(None) == "torch_tensorrt"
    assert bpw.choose_variant("0") == "torch_tensorrt"
    assert bpw.choose_variant("1") == "torch_tensorrt_rtx"
    assert bpw.choose_variant("TRUE") == "torch_tensorrt_rtx"


def test_pip_wheel_defaults_to_the_release_of_the_installed_torch(tmp_path):
    """pip builds in isolation; the backend still sees the torch of the target interpreter."""
    import importlib.metadata

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    expected = bpw.choose_version(RELEASES, None, torch_version)
    environ = _environ_without_build_settings()
    out = tmp_path / "wheelhouse"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)],
        env=environ,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    assert wheel.name.startswith(f"torch_tensorrt-{expected}+"), (
        torch_version,
        wheel.name,
    )


def test_windows_wheel_with_crlf_sources_is_patched_and_keeps_crlf(tmp_path):
    """Windows wheels ship CRLF sources; the LF patches must apply and CRLF must stay."""
    base = platform_wheel(WINDOWS_WHEEL)
    with zipfile.ZipFile(base) as zf:
        assert b"\r\n" in zf.read(MTTM), "this wheel no longer ships CRLF: test moot"
    wheel = bpw.build(tmp_path / "out", base_wheel=str(base), any_platform=True)
    assert wheel.name.endswith("-cp311-cp311-win_amd64.whl")
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(MTTM)
        version_file = zf.read(VERSION_FILE)
        _record_ok(
            zf,
            wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info/",
        )
    assert b"def _offload_original_model" in source
    assert source.count(b"\n") == source.count(
        b"\r\n"
    ), "line endings were not restored"
    assert version_file.startswith(b'__version__ = "2.14.0+offload.')
    assert version_file.count(b"\n") == version_file.count(b"\r\n")
