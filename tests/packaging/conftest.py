"""Shared fixtures of the CPU tests: the supported base wheels, fetched once through pip."""

import atexit
import functools
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import build_patched_wheel as bpw  # noqa: E402

RELEASES = bpw.load_upstream()
SUPPORTED = [
    (variant, version)
    for version in sorted(RELEASES, key=bpw.version_key)
    for variant in bpw.VARIANTS
]
CACHE = Path(
    os.environ.get(
        "TORCHTRT_WHEEL_CACHE",
        Path.home() / ".cache" / "torch-tensorrt-offload" / "wheels",
    )
)


@functools.cache
def base_wheel(variant: str, version: str) -> Path:
    """The official wheel of ``variant`` ``version`` for this interpreter, from the cache or pip."""
    digests = RELEASES[version][variant]
    target = CACHE / f"{variant}-{version}"
    cached = sorted(target.glob("*.whl")) if target.is_dir() else []
    if len(cached) == 1 and bpw.sha256_of(cached[0]) == digests.get(cached[0].name):
        return cached[0]
    for stale in cached:
        stale.unlink()
    target.mkdir(parents=True, exist_ok=True)
    return bpw.download_base_wheel(variant, version, digests, target)


def platform_wheel(name: str) -> Path:
    """The official wheel file ``name`` (any platform), from the cache or through pip."""
    dist, version, tags = bpw.parse_wheel_name(name)
    python_tag, abi, platform = tags.split("-")
    digest = RELEASES[version][dist][name]
    target = CACHE / "by-name" / name
    path = target / name
    if path.is_file() and bpw.sha256_of(path) == digest:
        return path
    target.mkdir(parents=True, exist_ok=True)
    pip_args = ["--platform", platform, "--implementation", "cp", "--abi", abi]
    pip_args += ["--python-version", python_tag[2:3] + "." + python_tag[3:]]
    return bpw.download_base_wheel(dist, version, {name: digest}, target, pip_args)


@pytest.fixture(params=SUPPORTED, ids=lambda p: f"{p[0]}-{p[1]}")
def supported_wheel(request) -> Path:
    return base_wheel(*request.param)


@pytest.fixture
def rtx_2_11_wheel() -> Path:
    return base_wheel("torch_tensorrt_rtx", "2.11.0")


TREES = Path(tempfile.mkdtemp(prefix="torchtrt-trees-"))
atexit.register(shutil.rmtree, TREES, ignore_errors=True)


@functools.cache
def patched_tree(
    variant: str, version: str, patches_dir: Path = bpw.PATCHES_DIR
) -> Path:
    """The upstream-layout tree of a release wheel with a series applied, built once per run."""
    wheel = base_wheel(variant, version)
    tree = (
        Path(tempfile.mkdtemp(prefix=f"{variant}-{version}-", dir=TREES)) / "upstream"
    )
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.startswith("torch_tensorrt/")]
        zf.extractall(tree / "py", members=members)
    _, patches = bpw.series_for(version, patches_dir)
    bpw.apply_series(tree, patches, wheel.name)
    return tree


@pytest.fixture
def patched_trees():
    return patched_tree


# The patched _MutableTorchTensorRTModule.py of every supported release, run with the compiler faked
VERSIONS = sorted(RELEASES, key=bpw.version_key)


@pytest.fixture(params=VERSIONS)
def version(request):
    return request.param


@pytest.fixture
def calls():
    from mttm_harness import Calls

    return Calls()


@pytest.fixture
def mttm_module(monkeypatch, patched_trees, version, calls):
    from mttm_harness import MTTM, load_mttm

    source = (patched_trees("torch_tensorrt", version) / MTTM).read_text()
    return load_mttm(monkeypatch, source, calls)
