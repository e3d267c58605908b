"""README's install route through pip, offline, in fresh virtual environments; the other frontends.

Every pip here runs with no index (``PIP_NO_INDEX=1``): what it needs comes from the cached
release wheels. The fresh environments carry the pip that ships with Python (``ensurepip``).
"""

import ensurepip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, base_wheel, bpw, platform_wheel
from packaging.utils import parse_wheel_filename
from packaging.version import Version

MTTM = "torch_tensorrt/dynamo/runtime/_MutableTorchTensorRTModule.py"
BUILD_SETTINGS = ("USE_TRT_RTX", "TORCHTRT_BASE_VERSION", "TORCHTRT_BASE_WHEEL")


def _offline_environ(**env) -> dict:
    """The environment without build settings, pip configuration or index; then ``env``."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in BUILD_SETTINGS and not k.startswith("PIP_")
    }
    environ.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    environ.update(env)
    return environ


def _run(*cmd, cwd=ROOT, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_offline_environ(**env),
        capture_output=True,
        text=True,
    )


def _fresh_venv(path: Path, system_site_packages: bool = False) -> Path:
    venv.create(path, with_pip=True, system_site_packages=system_site_packages)
    return path / "bin" / "python"


def _installed(python: Path, dist: str) -> dict:
    """Version, PATCHES.json presence and two files of ``dist`` as installed in ``python``'s env."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "try:\n"
        f"    d = m.distribution({dist!r})\n"
        "except m.PackageNotFoundError:\n"
        "    print('null'); sys.exit()\n"
        "print(json.dumps({'version': d.version,"
        " 'patches': d.read_text('PATCHES.json') is not None,"
        f" 'mttm': d.locate_file({MTTM!r}).read_text(),"
        " 'version_file': d.locate_file('torch_tensorrt/_version.py').read_text()}))"
    )
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def _readme_command(prefix: str) -> list:
    """The one command line of README.md that starts with ``prefix``, split as a shell would."""
    lines = [
        line.strip()
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.strip().startswith(prefix)
    ]
    assert len(lines) == 1, f"README.md has {len(lines)} lines starting with {prefix!r}"
    return shlex.split(lines[0])


@pytest.fixture(scope="module")
def trt_wheel() -> Path:
    return base_wheel("torch_tensorrt", "2.14.0")


def test_offline_install_listing_patches_and_going_back(tmp_path, trt_wheel):
    """README's offline route, its command that lists the patches, and its way back."""
    python = _fresh_venv(tmp_path / "venv")
    # Exactly the offline command of README.md, with no index
    result = _run(
        python, "-m", "pip", "install", "--no-deps", ".", TORCHTRT_BASE_WHEEL=trt_wheel
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, patches = bpw.series_for("2.14.0")
    version = f"2.14.0+{bpw.local_label(patches)}"
    installed = _installed(python, "torch_tensorrt")
    assert installed["version"] == version and installed["patches"]
    assert f'__version__ = "{version}"' in installed["version_file"]
    assert "def _offload_original_model" in installed["mttm"]

    # README: which patches are installed
    listing = _readme_command('python -c "import importlib.metadata')
    out = subprocess.run(
        [str(python)] + listing[1:], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [trt_wheel.name] + [
        bpw._patch_name(p.path) for p in patches
    ]

    # README: back to the release. The local version satisfies ==2.14.0, so pip keeps it...
    links = ["--find-links", str(trt_wheel.parent)]
    result = _run(
        python, "-m", "pip", "install", "--no-deps", *links, "torch-tensorrt==2.14.0"
    )
    assert (
        result.returncode == 0 and "already satisfied" in result.stdout
    ), result.stdout
    assert _installed(python, "torch_tensorrt")["version"] == version
    assert Version(version) > Version("2.14.0")
    # ...and --force-reinstall replaces it with the release
    back = _readme_command("pip install --force-reinstall")
    assert back[-1] == "torch-tensorrt==X.Y.Z", back
    result = _run(python, "-m", *back[:-1], *links, "torch-tensorrt==2.14.0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    installed = _installed(python, "torch_tensorrt")
    with zipfile.ZipFile(trt_wheel) as zf:
        assert installed["mttm"] == zf.read(MTTM).decode()
    assert installed["version"] == "2.14.0" and not installed["patches"]


def _wheel_for_another_python(rtx_2_11_wheel: Path) -> Path:
    """The official wheel of the same release and platform for another CPython."""
    _, _, tags = bpw.parse_wheel_name(rtx_2_11_wheel.name)
    ours = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    other = "cp312" if ours != "cp312" else "cp311"
    name = rtx_2_11_wheel.name.replace(f"{ours}-{ours}", f"{other}-{other}")
    assert name != rtx_2_11_wheel.name
    return platform_wheel(name)


@pytest.mark.parametrize("which", ["another-python", "windows"])
def test_base_wheel_this_python_cannot_install_is_refused(
    tmp_path, which, rtx_2_11_wheel
):
    if which == "windows":  # on Linux, where these tests run
        wheel = platform_wheel("torch_tensorrt-2.14.0-cp311-cp311-win_amd64.whl")
    else:
        wheel = _wheel_for_another_python(rtx_2_11_wheel)
    python = _fresh_venv(tmp_path / "venv")
    result = _run(
        python, "-m", "pip", "install", "--no-deps", ".", TORCHTRT_BASE_WHEEL=wheel
    )
    assert result.returncode != 0
    errors = [
        line.strip()
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip().startswith("error: ") and ".whl" in line
    ]
    assert len(errors) == 1, result.stdout + result.stderr
    _, _, wheel_tags = bpw.parse_wheel_name(wheel.name)
    interpreter = subprocess.run(
        [
            str(python),
            "-c",
            "from pip._vendor.packaging.tags import sys_tags;"
            "print(next(iter(sys_tags())))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert f"{wheel.name} is for {wheel_tags}" in errors[0]
    assert f"its tags are {interpreter} and" in errors[0]
    assert "the official wheel for it is " in errors[0]
    for dist in ("torch_tensorrt", "torch_tensorrt_rtx"):
        assert _installed(python, dist) is None


def test_editable_install_is_refused_with_the_reason(tmp_path):
    result = _run(sys.executable, "-m", "pip", "install", "--no-deps", "-e", ".")
    assert result.returncode != 0
    assert "editable installs are not possible" in result.stdout + result.stderr
    assert "no source tree to link to" in result.stdout + result.stderr


def test_sdist_is_reproducible_and_builds_the_same_wheel(tmp_path, rtx_2_11_wheel):
    first = bpw.build_sdist(str(tmp_path / "a"))
    second = bpw.build_sdist(str(tmp_path / "b"))
    sdist = tmp_path / "a" / first
    assert first == second
    assert sdist.read_bytes() == (tmp_path / "b" / second).read_bytes()
    top = first[: -len(".tar.gz")]
    with tarfile.open(sdist) as tar:
        names = [m.name for m in tar.getmembers()]
        pkg_info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    assert names[0] == f"{top}/PKG-INFO"
    expected = {
        "README.md",
        "build_patched_wheel.py",
        "pyproject.toml",
        "upstream.toml",
    }
    for release in bpw.load_upstream():
        series, patches = bpw.series_for(release)
        expected.add(series.relative_to(ROOT).as_posix())
        expected.update(p.path.relative_to(ROOT).as_posix() for p in patches)
    missing = {f"{top}/{name}" for name in expected} - set(names)
    assert not missing, missing
    assert f"Version: {top.split('-', 1)[1]}\n" in pkg_info

    # pip builds the wheel from the sdist, offline, byte for byte the one built from the tree
    result = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-cache-dir",
        "-w",
        tmp_path / "wheelhouse",
        sdist,
        TORCHTRT_BASE_WHEEL=rtx_2_11_wheel,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (from_sdist,) = (tmp_path / "wheelhouse").glob("*.whl")
    from_tree = bpw.build(tmp_path / "tree", base_wheel=str(rtx_2_11_wheel))
    assert from_sdist.name == from_tree.name
    assert from_sdist.read_bytes() == from_tree.read_bytes()
    name, version, _, tags = parse_wheel_filename(from_sdist.name)
    assert name == "torch-tensorrt-rtx" and version.public == "2.11.0"


def _fake_torch(site: Path, version: str) -> None:
    info = site / f"torch-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
    )


def _picked_release(result: subprocess.CompletedProcess) -> str:
    """The release the build went for, from its message that it cannot download it offline."""
    found = re.findall(
        r"could not download torch-tensorrt==(\S+) ", result.stdout + result.stderr
    )
    assert found, result.stdout[-3000:] + result.stderr[-3000:]
    return found[0]


def test_release_pick_sees_torch_in_the_user_site_through_pip(tmp_path):
    """pip's build isolation hides the user site; the pick still sees a torch installed there."""
    python = _fresh_venv(tmp_path / "venv", system_site_packages=True)
    user_base = tmp_path / "userbase"
    user_site = subprocess.run(
        [str(python), "-c", "import site; print(site.getusersitepackages())"],
        env=dict(os.environ, PYTHONUSERBASE=str(user_base)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _fake_torch(Path(user_site), "2.12.0")
    # The build asks for pip to download the release: offline, the pip that ships with Python
    links = tmp_path / "links"
    links.mkdir()
    for bundled in (Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"):
        shutil.copy(bundled, links)
    result = _run(
        python,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-w",
        tmp_path / "out",
        ".",
        PYTHONUSERBASE=user_base,
        PIP_FIND_LINKS=links,
    )
    assert _picked_release(result) == "2.12.1"


@pytest.mark.parametrize("route", ["command-line", "pip-no-build-isolation"])
def test_release_pick_sees_torch_on_pythonpath(tmp_path, route):
    _fake_torch(tmp_path / "path", "2.12.0")
    if route == "command-line":
        cmd = [sys.executable, ROOT / "build_patched_wheel.py", "-o", tmp_path / "out"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
        ]
        cmd += ["-w", tmp_path / "out", "."]
    result = _run(*cmd, PYTHONPATH=tmp_path / "path")
    assert _picked_release(result) == "2.12.1"
