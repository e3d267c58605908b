"""Build a patched Torch-TensorRT wheel from an official release wheel.

This module is the whole build: a PEP 517 backend (``pip install .``, ``pip wheel .``,
``python -m build``) and a command line (``python build_patched_wheel.py --help``). It

1. picks the release (``TORCHTRT_BASE_VERSION``, else the one matching the X.Y of the torch that
   this interpreter imports, else the newest in ``upstream.toml``) and the variant
   (``USE_TRT_RTX=1`` selects ``torch_tensorrt_rtx``, as in upstream's setup.py);
2. gets the official wheel for this Python and platform, through pip (the user's index
   configuration applies, pip checks the index's digest) or from ``TORCHTRT_BASE_WHEEL``, and
   refuses it unless its sha256 is the one recorded in ``upstream.toml`` and its tags are ones
   this interpreter installs (``--any-platform`` on the command line builds for another machine);
3. applies the quilt series in ``patches/`` (``patches/X.Y/series`` where a release line needs its
   own hunks; ``--patches-dir patches/staging`` for the patches not yet validated on a GPU) with
   ``git apply`` in a scratch repository, never with fuzz, and checks that every patch changed
   every file it names (CRLF sources of Windows wheels are patched as LF and restored);
4. writes ``<dist>-X.Y.Z+<label>-<tags>.whl``: the release's files with the patches, its METADATA
   and ``torch_tensorrt/_version.py`` with only the version changed, a new RECORD, and
   ``PATCHES.json`` (base wheel, its sha256, the series and each patch's sha256) in the dist-info.

Any failure raises ``BuildError`` with one message and leaves no wheel behind.
``--check-release WHEEL`` builds nothing: it lists what of the series needs a human before a new
release can be patched (see ``check_release``).

Reproducible: the same inputs give the same bytes. Entries keep the release wheel's order and
timestamps, added ones take its newest timestamp, and ``SOURCE_DATE_EPOCH`` (when set) stamps
them all; nothing records the time of the build.

Dependencies: none beyond the standard library (and tomli on Python 3.10). The offline route,
``PIP_NO_INDEX=1 TORCHTRT_BASE_WHEEL=... pip install .``, runs this backend in pip's build
isolation with no index, where no build requirement can be installed: ``build-system.requires``
is empty and ``get_requires_for_build_wheel`` asks for pip only when the release wheel must be
downloaded. So ``packaging`` and ``wheel`` are not imported here: the wheel is written with
zipfile and a RECORD of hashes, and names are split by a regular expression; the formats are
small and fixed, and the tests check the result with ``packaging``. The one thing
not written here is the list of tags this interpreter installs (the manylinux and glibc rules):
it comes from ``packaging.tags.sys_tags()``, run by this interpreter outside pip's isolation,
where the user's ``packaging`` or, failing that, the copy vendored in the user's pip provides it
(``_probe_interpreter``); where neither exists, ``get_requires_for_build_wheel`` asks for
``packaging``.

``build_sdist`` writes this directory's build inputs (this module, ``pyproject.toml``,
``upstream.toml``, ``patches/``, README) as ``torch_tensorrt_offload-0+offload.<hash>.tar.gz``;
the wheel built from it is named after the release it patches. Editable installs are refused:
the installed files are the release's, patched at build time; there is no source tree to link.
"""

from __future__ import annotations

import argparse
import base64
import csv
import functools
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent
PATCHES_DIR = ROOT / "patches"
UPSTREAM_TOML = ROOT / "upstream.toml"
VARIANTS = ("torch_tensorrt", "torch_tensorrt_rtx")
PROVENANCE_FILE = "PATCHES.json"
VERSION_FILE = "torch_tensorrt/_version.py"
# Patches are written against the upstream repository, whose Python package lives under py/.
UPSTREAM_PACKAGE_PREFIX = "py/"
SDIST_NAME = "torch_tensorrt_offload"
SDIST_FILES = ("README.md", "build_patched_wheel.py", "pyproject.toml", "upstream.toml")
# 1980-01-01, the earliest time a zip archive can hold
ZIP_EPOCH = 315532800


class BuildError(Exception):
    """A build input is wrong or a step failed; the message says which and what to do."""


@dataclass(frozen=True)
class Patch:
    name: str  # as written in the series file
    path: Path

    def files(self) -> List[str]:
        """Paths (relative to the upstream repository root) that this patch changes."""
        names = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^diff --git a/(\S+) b/(\S+)$", line)
            if match:
                names.append(match.group(2))
        if not names:
            raise BuildError(
                f"patch {self.name}: no 'diff --git a/... b/...' header found"
            )
        return names


# --------------------------------------------------------------------------------------------
# upstream.toml: the supported releases and the digests of their wheels


def load_upstream(path: Path = UPSTREAM_TOML) -> Dict[str, Dict[str, Dict[str, str]]]:
    """Return ``{version: {variant: {wheel file name: sha256}}}``."""
    with path.open("rb") as f:
        data = tomllib.load(f)
    releases = data.get("releases")
    if not isinstance(releases, dict) or not releases:
        raise BuildError(f"{path}: no [releases] table")
    return releases


def version_key(version: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# --------------------------------------------------------------------------------------------
# The interpreter the wheel is for, and the release and variant to patch


def _user_environment() -> Dict[str, str]:
    """This process's environment without what pip's build isolation adds to it.

    pip's isolation puts on ``PYTHONPATH`` a directory whose sitecustomize.py hides the
    interpreter's site-packages, and sets ``PYTHONNOUSERSITE``; without both, a child interpreter
    imports what the user's does. The ``PYTHONPATH`` the user had is lost (pip replaced it): a
    torch found only through it is seen by the command line and by ``pip install
    --no-build-isolation .``. Anywhere else the environment is returned unchanged.
    """
    env = dict(os.environ)
    entries = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    isolation = [
        p
        for p in entries
        if Path(p).name == "site"
        and Path(p).parent.name.startswith("pip-build-env-")
        and (Path(p) / "sitecustomize.py").is_file()
    ]
    if isolation:
        env["PYTHONPATH"] = os.pathsep.join(p for p in entries if p not in isolation)
        env.pop("PYTHONNOUSERSITE", None)
    return env


_PROBE = """
import sys
sys.path[:] = [p for p in sys.path if p]  # not the current directory
import importlib.metadata, json
try:
    torch = importlib.metadata.version("torch")
except importlib.metadata.PackageNotFoundError:
    torch = None
try:
    from packaging.tags import sys_tags
except ImportError:
    try:
        from pip._vendor.packaging.tags import sys_tags
    except ImportError:
        sys_tags = list
print(json.dumps({"torch": torch, "tags": [str(tag) for tag in sys_tags()]}))
"""


@functools.lru_cache(maxsize=None)
def _probe_interpreter() -> Tuple[Optional[str], Tuple[str, ...]]:
    """(torch version, wheel tags best first) of this interpreter as the user runs it."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE],
            env=_user_environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        found = json.loads((out.stdout.strip().splitlines() or ["null"])[-1])
        return found["torch"], tuple(found["tags"])
    except (OSError, subprocess.SubprocessError, ValueError, TypeError, KeyError):
        raise BuildError(
            f"{sys.executable} could not say which torch it imports and which wheels it "
            "installs; run it alone to see why"
        ) from None


def installed_torch_version() -> Optional[str]:
    """The version of the torch this interpreter imports (user site included), or None."""
    return _probe_interpreter()[0]


def interpreter_tags() -> Tuple[str, ...]:
    """The wheel tags this interpreter installs, best first (``packaging.tags.sys_tags()``)."""
    tags = _probe_interpreter()[1]
    if not tags:
        raise BuildError(
            f"cannot tell which wheels {sys.executable} installs: neither packaging nor pip is "
            "installed for it; install packaging"
        )
    return tags


def choose_version(
    releases: Dict[str, dict], requested: Optional[str], torch_version: Optional[str]
) -> str:
    supported = sorted(releases, key=version_key)
    if requested:
        if requested not in releases:
            raise BuildError(
                f"TORCHTRT_BASE_VERSION={requested} is not supported; supported releases: "
                + ", ".join(supported)
            )
        return requested
    if torch_version:
        major_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
        matching = [v for v in supported if v.startswith(major_minor + ".")]
        if matching:
            return matching[-1]
    return supported[-1]


def choose_variant(use_trt_rtx: Optional[str]) -> str:
    value = (use_trt_rtx or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return "torch_tensorrt"
    if value in ("1", "true", "yes", "on"):
        return "torch_tensorrt_rtx"
    raise BuildError(f"USE_TRT_RTX={use_trt_rtx!r} is not understood; use 1 or 0")


# --------------------------------------------------------------------------------------------
# The base wheel


def parse_wheel_name(name: str) -> Tuple[str, str, str]:
    """Split ``dist-version-python-abi-platform.whl`` into (dist, version, tags)."""
    match = re.match(r"^([A-Za-z0-9_]+)-([^-]+)-([^-]+-[^-]+-[^-]+)\.whl$", name)
    if not match:
        raise BuildError(f"{name} is not a wheel file name")
    return match.group(1), match.group(2), match.group(3)


def wheel_tags(name: str) -> List[str]:
    """Every tag a wheel file name declares (``py2.py3-none-any`` declares two)."""
    python, abi, platform = parse_wheel_name(name)[2].split("-")
    return [
        f"{p}-{a}-{t}"
        for p in python.split(".")
        for a in abi.split(".")
        for t in platform.split(".")
    ]


def check_tags(name: str, tags: Sequence[str], recorded: Sequence[str]) -> None:
    """Refuse wheel ``name`` unless one of its tags is in ``tags`` (this interpreter's)."""
    if set(wheel_tags(name)) & set(tags):
        return
    fitting = [w for w in sorted(recorded) if set(wheel_tags(w)) & set(tags)]
    raise BuildError(
        f"{name} is for {parse_wheel_name(name)[2]}, which this Python ({sys.executable}) does "
        f"not install: its tags are {tags[0]} and {len(tags) - 1} more; "
        + (
            f"the official wheel for it is {fitting[0]}"
            if fitting
            else "this release has no official wheel for it"
        )
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_base_wheel(
    wheel: Path,
    releases: Dict[str, dict],
    version: Optional[str],
    variant: Optional[str],
    tags: Optional[Sequence[str]] = None,
) -> Tuple[str, str, str]:
    """Check that ``wheel`` is a recorded official wheel; return (variant, version, sha256).

    With ``tags`` (this interpreter's), also that it is a wheel this interpreter installs.
    """
    if not wheel.is_file():
        raise BuildError(f"base wheel {wheel} does not exist")
    dist, wheel_version, _ = parse_wheel_name(wheel.name)
    if dist not in VARIANTS:
        raise BuildError(
            f"{wheel.name} is not a Torch-TensorRT wheel (distribution {dist!r}; expected one of "
            + ", ".join(VARIANTS)
            + ")"
        )
    if variant and dist != variant:
        raise BuildError(
            f"{wheel.name} is {dist} but the build asks for {variant} (USE_TRT_RTX); "
            "set USE_TRT_RTX to match the wheel"
        )
    if version and wheel_version != version:
        raise BuildError(
            f"{wheel.name} is release {wheel_version} but TORCHTRT_BASE_VERSION={version}"
        )
    if wheel_version not in releases:
        raise BuildError(
            f"{wheel.name}: release {wheel_version} is not supported; supported releases: "
            + ", ".join(sorted(releases, key=version_key))
        )
    if tags is not None:
        check_tags(wheel.name, tags, list(releases[wheel_version].get(dist, {})))
    try:
        with zipfile.ZipFile(wheel) as zf:
            if not any(n.startswith("torch_tensorrt/") for n in zf.namelist()):
                raise BuildError(f"{wheel.name} holds no torch_tensorrt package")
    except zipfile.BadZipFile:
        raise BuildError(f"{wheel} is not a valid wheel (not a zip archive)") from None
    expected = releases[wheel_version].get(dist, {}).get(wheel.name)
    actual = sha256_of(wheel)
    if expected is None:
        raise BuildError(
            f"{wheel.name} is not a recorded official release wheel (no sha256 for it in "
            f"{UPSTREAM_TOML.name})"
        )
    if actual != expected:
        raise BuildError(
            f"{wheel.name}: sha256 {actual} differs from the official release's {expected} "
            f"recorded in {UPSTREAM_TOML.name}; refusing to patch it"
        )
    return dist, wheel_version, actual


def download_base_wheel(
    variant: str,
    version: str,
    digests: Dict[str, str],
    dest: Path,
    pip_args: Sequence[str] = (),
) -> Path:
    """Let pip fetch the official wheel, pinned to the recorded digests.

    For this interpreter and platform unless ``pip_args`` says otherwise (``--platform``, ...).
    """
    requirement = variant.replace("_", "-") + "==" + version
    hashes = " ".join(f"--hash=sha256:{h}" for h in sorted(set(digests.values())))
    req_file = dest / "base-requirement.txt"
    req_file.write_text(f"{requirement} {hashes}\n", encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        *pip_args,
        "-r",
        str(req_file),
        "-d",
        str(dest),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if out.returncode != 0 or len(wheels) != 1:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise BuildError(
            f"could not download {requirement} for this Python and platform through pip"
            + (f": {detail[-1]}" if detail else "")
            + ". Without network access, set TORCHTRT_BASE_WHEEL to the official wheel file."
        )
    return wheels[0]


# --------------------------------------------------------------------------------------------
# The patch series


def series_for(
    version: str, patches_dir: Path = PATCHES_DIR
) -> Tuple[Path, List[Patch]]:
    """The series for a release: ``patches/X.Y/series`` if present, else ``patches/series``.

    Names in a series file are relative to the directory that holds it.
    """
    major_minor = ".".join(version.split(".")[:2])
    series = patches_dir / major_minor / "series"
    if not series.is_file():
        series = patches_dir / "series"
    if not series.is_file():
        raise BuildError(f"no series file in {patches_dir}")
    patches = []
    for raw in series.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split()[0]
        path = (series.parent / name).resolve()
        if not path.is_file():
            raise BuildError(f"{series}: listed patch {name} does not exist")
        patches.append(Patch(name, path))
    if not patches:
        raise BuildError(f"{series} lists no patch")
    return series, patches


def _hunks(patch: Patch) -> List[Tuple[str, str]]:
    """``(file, hunk header)`` of each hunk of ``patch``, in order."""
    hunks, current = [], ""
    for text in patch.path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^diff --git a/\S+ b/(\S+)$", text)
        if match:
            current = match.group(1)
        elif text.startswith("@@"):
            hunks.append((current, text.strip()))
    return hunks


def _hunk_at(patch: Patch, file: str, line: int) -> str:
    """Describe the hunk of ``patch`` for ``file`` that starts at old line ``line``."""
    headers = [header for name, header in _hunks(patch) if name == file]
    for number, header in enumerate(headers, start=1):
        start = re.match(r"^@@ -(\d+)", header)
        if start and int(start.group(1)) == line:
            return f"hunk #{number} ({header})"
    return f"the hunk at line {line}"


def _git_repository(tree: Path) -> Dict[str, str]:
    """Make ``tree`` a git repository of its own; the environment to run git in it with.

    GIT_DIR, GIT_WORK_TREE and the like (set inside git hooks, for one) would redirect git, and
    ``git apply`` run inside another work tree resolves paths against that tree's root.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(tree.parent)
    subprocess.run(["git", "init", "-q", str(tree)], check=True, env=env)
    return env


def apply_series(tree: Path, patches: Sequence[Patch], label: str) -> None:
    """Apply ``patches`` in order to ``tree`` (laid out as the upstream repository).

    ``tree`` is made a git repository of its own first: ``git apply`` run inside another work
    tree resolves paths against that tree's root, skips every file and still exits 0.
    """
    if shutil.which("git") is None:
        raise BuildError("git is needed to apply the patches and was not found on PATH")
    git = ["git", "-c", "core.autocrlf=false"]
    env = _git_repository(tree)
    for patch in patches:
        files = patch.files()
        before = {}
        for name in files:
            target = tree / name
            if not name.startswith(UPSTREAM_PACKAGE_PREFIX + "torch_tensorrt/"):
                raise BuildError(
                    f"patch {patch.name}: {name} is outside py/torch_tensorrt/, which is all a "
                    "release wheel holds; keep such changes out of the series"
                )
            before[name] = sha256_of(target) if target.is_file() else None
        # Windows wheels ship CRLF sources; the patches are LF, as upstream's repository is.
        # Apply to LF text and restore CRLF afterwards, so line endings stay the wheel's own.
        crlf = [
            tree / name
            for name in files
            if (tree / name).is_file() and b"\r\n" in (tree / name).read_bytes()
        ]
        for target in crlf:
            target.write_bytes(target.read_bytes().replace(b"\r\n", b"\n"))
        out = subprocess.run(
            git + ["apply", "-p1", "--whitespace=nowarn", str(patch.path)],
            cwd=tree,
            capture_output=True,
            text=True,
            env=env,
        )
        if out.returncode != 0:
            message = out.stderr.strip()
            failed = re.search(r"patch failed: (\S+):(\d+)", message)
            missing = re.search(r"error: (\S+): No such file or directory", message)
            if failed:
                file, line = failed.group(1), int(failed.group(2))
                where = f"{file}, {_hunk_at(patch, file, line)}"
            elif missing:
                where = f"{missing.group(1)} (not in the wheel)"
            else:
                where = "; ".join(message.splitlines()[:3])
            raise BuildError(f"patch {patch.name} does not apply to {label}: {where}")
        for target in crlf:
            target.write_bytes(target.read_bytes().replace(b"\n", b"\r\n"))
        for name in files:
            target = tree / name
            after = sha256_of(target) if target.is_file() else None
            if after == before[name]:
                raise BuildError(
                    f"patch {patch.name}: git apply reported success but {name} is unchanged"
                )


# --------------------------------------------------------------------------------------------
# Writing the wheel


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def local_label(patches: Sequence[Patch]) -> str:
    """``offload.<8 hex>``: names the patch set, so different series give different versions."""
    digest = hashlib.sha256()
    for patch in patches:
        digest.update(patch.path.read_bytes())
    return "offload." + digest.hexdigest()[:8]


def source_date_epoch() -> Optional[int]:
    """``SOURCE_DATE_EPOCH`` (not before 1980, the earliest a zip holds), or None when unset."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BuildError(
            f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds since 1970"
        )
    return max(int(value), ZIP_EPOCH)


def _set_version(data: bytes, pattern: str, old: str, new: str, what: str) -> bytes:
    """Replace version ``old`` in the one line of ``data`` that ``pattern`` (with {v}) matches."""
    text = data.decode("utf-8")
    found = list(re.finditer(pattern.format(v=re.escape(old)), text, flags=re.M))
    if len(found) != 1:
        raise BuildError(f"{what} does not state version {old} once")
    start, end = found[0].span()
    return (text[:start] + text[start:end].replace(old, new) + text[end:]).encode(
        "utf-8"
    )


def write_patched_wheel(
    base: Path,
    patched_tree: Path,
    out_dir: Path,
    label: str,
    provenance: dict,
    epoch: Optional[int] = None,
) -> Path:
    """Write the release wheel's files, with those under ``patched_tree`` replaced, re-versioned.

    Entries keep the base wheel's order and timestamps; ``epoch`` (seconds) replaces them all.
    """
    date_time = time.gmtime(epoch)[:6] if epoch is not None else None
    dist, version, tags = parse_wheel_name(base.name)
    new_version = f"{version}+{label}"
    old_info, new_info = (
        f"{dist}-{version}.dist-info/",
        f"{dist}-{new_version}.dist-info/",
    )
    name = f"{dist}-{new_version}-{tags}.whl"
    records: List[Tuple[str, str, str]] = []
    tmp = out_dir / (name + ".part")
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(
        tmp, "w", compression=zipfile.ZIP_DEFLATED
    ) as dst:

        def add(arcname: str, data: bytes, like: zipfile.ZipInfo) -> None:
            entry = zipfile.ZipInfo(arcname, date_time=date_time or like.date_time)
            entry.external_attr = like.external_attr
            entry.create_system = like.create_system
            entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(entry, data)
            records.append((arcname, _record_hash(data), str(len(data))))

        infos = [
            info
            for info in src.infolist()
            if not info.is_dir() and info.filename != old_info + "RECORD"
        ]
        for info in infos:
            arcname = info.filename
            data = src.read(info)
            patched = patched_tree / arcname
            if arcname.startswith("torch_tensorrt/") and patched.is_file():
                data = patched.read_bytes()
            if arcname == VERSION_FILE:
                data = _set_version(
                    data, '^__version__ = "{v}"', version, new_version, arcname
                )
            if arcname.startswith(old_info):
                arcname = new_info + arcname[len(old_info) :]
                if arcname == new_info + "METADATA":
                    data = _set_version(
                        data,
                        r"^Version: {v}(?=\r?$)",
                        version,
                        new_version,
                        base.name + " METADATA",
                    )
            add(arcname, data, info)
        if VERSION_FILE not in src.namelist():
            raise BuildError(f"{base.name} holds no {VERSION_FILE}")
        # Added files: the newest timestamp of the release's, mode rw-r--r--
        added = zipfile.ZipInfo("", date_time=max(i.date_time for i in infos))
        added.external_attr, added.create_system = 0o644 << 16, 3
        extra = json.dumps(provenance, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        add(new_info + PROVENANCE_FILE, extra, added)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(records + [(new_info + "RECORD", "", "")])
        add(new_info + "RECORD", buffer.getvalue().encode("utf-8"), added)
    final = out_dir / name
    tmp.replace(final)
    return final


def build(
    out_dir: Path,
    *,
    base_version: Optional[str] = None,
    use_trt_rtx: Optional[str] = None,
    base_wheel: Optional[str] = None,
    patches_dir: Path = PATCHES_DIR,
    upstream_toml: Path = UPSTREAM_TOML,
    any_platform: bool = False,
) -> Path:
    """Build the patched wheel into ``out_dir`` and return its path.

    ``any_platform`` accepts a base wheel that this interpreter does not install.
    """
    releases = load_upstream(upstream_toml)
    epoch = source_date_epoch()
    tags = None if any_platform else interpreter_tags()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torchtrt-patch-") as scratch_name:
        scratch = Path(scratch_name)
        if base_wheel:
            variant = choose_variant(use_trt_rtx) if use_trt_rtx else None
            wheel = Path(base_wheel).expanduser().resolve()
            variant, version, digest = check_base_wheel(
                wheel, releases, base_version, variant, tags
            )
        else:
            variant = choose_variant(use_trt_rtx)
            version = choose_version(releases, base_version, installed_torch_version())
            digests = releases[version].get(variant)
            if not digests:
                raise BuildError(f"{variant} {version} has no recorded wheels")
            download_dir = scratch / "download"
            download_dir.mkdir()
            wheel = download_base_wheel(variant, version, digests, download_dir)
            variant, version, digest = check_base_wheel(
                wheel, releases, version, variant, tags
            )
        series, patches = series_for(version, patches_dir)
        tree = scratch / "upstream"
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.startswith("torch_tensorrt/")]
            zf.extractall(tree / UPSTREAM_PACKAGE_PREFIX, members=members)
        apply_series(tree, patches, wheel.name)
        provenance = {
            "base_wheel": wheel.name,
            "base_sha256": digest,
            "series": _patch_name(series),
            "patches": [
                {"name": _patch_name(p.path), "sha256": sha256_of(p.path)}
                for p in patches
            ],
        }
        label = local_label(patches)
        # Write in the scratch directory and move at the end, so a failure leaves no wheel.
        built = write_patched_wheel(
            wheel, tree / UPSTREAM_PACKAGE_PREFIX, scratch, label, provenance, epoch
        )
        final = out_dir / built.name
        shutil.move(str(built), str(final))
        return final


def _patch_name(path: Path) -> str:
    """``path`` relative to this repository's patches/ where it lies there, else as given."""
    try:
        return path.resolve().relative_to(PATCHES_DIR.resolve()).as_posix()
    except ValueError:
        return str(path)


def build_from_environment(out_dir: Path) -> Path:
    return build(
        out_dir,
        base_version=os.environ.get("TORCHTRT_BASE_VERSION") or None,
        use_trt_rtx=os.environ.get("USE_TRT_RTX"),
        base_wheel=os.environ.get("TORCHTRT_BASE_WHEEL") or None,
    )


def sdist_files(root: Path = ROOT) -> List[str]:
    """What the backend reads, relative to ``root``: the files ``build_sdist`` ships."""
    missing = [name for name in SDIST_FILES if not (root / name).is_file()]
    if missing:
        raise BuildError(f"{root} lacks " + ", ".join(missing))
    patches = [
        path.relative_to(root).as_posix()
        for path in (root / "patches").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.name[0] != "."
    ]
    return sorted(SDIST_FILES + tuple(patches))


def write_sdist(out_dir: Path, root: Path = ROOT) -> Path:
    """``torch_tensorrt_offload-0+offload.<hash of the files>.tar.gz``, reproducibly."""
    files = sdist_files(root)
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode("utf-8") + b"\0" + (root / name).read_bytes() + b"\0")
    version = "0+offload." + digest.hexdigest()[:8]
    top = f"{SDIST_NAME}-{version}"
    pkg_info = (
        f"Metadata-Version: 2.2\nName: {SDIST_NAME}\nVersion: {version}\n"
        "Summary: The official Torch-TensorRT release wheel, rebuilt with patches applied\n"
    ).encode("utf-8")
    mtime = source_date_epoch() or ZIP_EPOCH
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{top}.tar.gz"
    tmp = out_dir / f"{top}.tar.gz.part"
    try:
        with tmp.open("wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=mtime
        ) as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in ["PKG-INFO"] + files:
                data = pkg_info if name == "PKG-INFO" else (root / name).read_bytes()
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), mtime, 0o644
                tar.addfile(info, io.BytesIO(data))
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


# --------------------------------------------------------------------------------------------
# PEP 517 backend. prepare_metadata_for_build_wheel is deliberately absent: pip then takes the
# metadata from the wheel that build_wheel returns, which is the only metadata that is right.


def _hook(run):
    """Run a hook; a BuildError becomes one line on stderr and exit status 1, shown by pip."""
    try:
        return run()
    except BuildError as e:
        sys.stderr.write(f"\nerror: {e}\n\n")
        raise SystemExit(1) from None


def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> List[str]:
    """pip to download the release wheel; nothing when ``TORCHTRT_BASE_WHEEL`` names it, so the
    offline route needs no index. packaging where this interpreter has neither it nor pip.
    """

    def requires() -> List[str]:
        needed = [] if os.environ.get("TORCHTRT_BASE_WHEEL") else ["pip"]
        return needed + ([] if _probe_interpreter()[1] else ["packaging"])

    return _hook(requires)


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[dict] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    return _hook(lambda: build_from_environment(Path(wheel_directory)).name)


def get_requires_for_build_sdist(config_settings: Optional[dict] = None) -> List[str]:
    return []


def build_sdist(sdist_directory: str, config_settings: Optional[dict] = None) -> str:
    return _hook(lambda: write_sdist(Path(sdist_directory)).name)


def _refuse_editable() -> None:
    raise BuildError(
        "editable installs are not possible: the installed files are the official release's, "
        "patched when the wheel is built, so there is no source tree to link to; "
        "run `pip install .` again after changing patches/"
    )


def get_requires_for_build_editable(
    config_settings: Optional[dict] = None,
) -> List[str]:
    return _hook(_refuse_editable)


def build_editable(
    wheel_directory: str,
    config_settings: Optional[dict] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    return _hook(_refuse_editable)


# --------------------------------------------------------------------------------------------
# Refreshing the series for a new release


def check_release(
    wheel: Path, version: str, patches_dir: Path = PATCHES_DIR
) -> List[str]:
    """What of the series needs a human before ``wheel`` (any Torch-TensorRT wheel, listed in
    ``upstream.toml`` or not) can be patched: one line per hunk that does not apply, per file
    a patch names that the wheel lacks, and per patch that changes nothing. Every patch is tried
    (``git apply --reject`` keeps the hunks that apply), so one run lists everything; an empty
    list means the series for ``version`` applies as it is.
    """
    series, patches = series_for(version, patches_dir)
    problems: List[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "upstream"
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.startswith("torch_tensorrt/")]
            if not members:
                raise BuildError(f"{wheel} holds no torch_tensorrt package")
            zf.extractall(tree / UPSTREAM_PACKAGE_PREFIX.rstrip("/"), members=members)
        env = _git_repository(tree)
        for patch in patches:
            for name in patch.files():
                if not (tree / name).is_file():
                    problems.append(f"{patch.name}: {name} is not in the wheel")
            before = {
                n: sha256_of(tree / n) for n in patch.files() if (tree / n).is_file()
            }
            out = subprocess.run(
                ["git", "apply", "-p1", "--reject", "--verbose", str(patch.path)],
                cwd=tree,
                capture_output=True,
                text=True,
                env=env,
            )
            current = ""
            for line in out.stderr.splitlines():
                checking = re.match(r"^Checking patch (\S+)\.\.\.$", line)
                if checking:
                    current = checking.group(1)
                rejected = re.match(r"^Rejected hunk #(\d+)\.$", line)
                if rejected:
                    number = int(rejected.group(1))
                    headers = [h for f, h in _hunks(patch) if f == current]
                    header = headers[number - 1] if number <= len(headers) else ""
                    problems.append(
                        f"{patch.name}: {current}: hunk #{number} ({header}) does not apply"
                    )
            if out.returncode == 0 and all(
                sha256_of(tree / n) == digest for n, digest in before.items()
            ):
                problems.append(f"{patch.name}: applies but changes nothing")
    return problems


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a Torch-TensorRT wheel with this repository's patches applied."
    )
    parser.add_argument("-o", "--out-dir", default="dist", help="where the wheel goes")
    parser.add_argument("--base-version", help="release X.Y.Z (TORCHTRT_BASE_VERSION)")
    parser.add_argument(
        "--base-wheel", help="official wheel file (TORCHTRT_BASE_WHEEL)"
    )
    parser.add_argument(
        "--rtx", action="store_true", help="torch_tensorrt_rtx (USE_TRT_RTX=1)"
    )
    parser.add_argument(
        "--any-platform",
        action="store_true",
        help="accept a base wheel for another Python or platform (a wheel for another machine)",
    )
    parser.add_argument(
        "--patches-dir",
        default=str(PATCHES_DIR),
        help="directory of the series to apply (default: patches/; patches/staging for "
        "patches not yet validated on a GPU)",
    )
    parser.add_argument(
        "--check-release",
        metavar="WHEEL",
        help="instead of building: list what of the series (for --base-version, else the "
        "wheel's version) needs a human before WHEEL can be patched; exit 1 if anything does",
    )
    args = parser.parse_args(argv)
    if args.check_release:
        wheel_path = Path(args.check_release)
        version = args.base_version or wheel_path.name.split("-")[1]
        try:
            problems = check_release(wheel_path, version, Path(args.patches_dir))
        except (BuildError, OSError, zipfile.BadZipFile) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for problem in problems:
            print(problem)
        if not problems:
            print(f"the series for {version} applies to {wheel_path.name} as it is")
        return 1 if problems else 0
    try:
        wheel = build(
            Path(args.out_dir),
            base_version=args.base_version or os.environ.get("TORCHTRT_BASE_VERSION"),
            use_trt_rtx="1" if args.rtx else os.environ.get("USE_TRT_RTX"),
            base_wheel=args.base_wheel or os.environ.get("TORCHTRT_BASE_WHEEL"),
            patches_dir=Path(args.patches_dir),
            any_platform=args.any_platform,
        )
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
