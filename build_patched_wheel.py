"""Build a patched Torch-TensorRT wheel from an official release wheel.

This module is the whole build: a PEP 517 backend (``pip install .`` / ``pip wheel .``) and a
command line (``python build_patched_wheel.py --help``). It

1. picks the release (``TORCHTRT_BASE_VERSION``, else the one matching the installed torch's
   X.Y, else the newest in ``upstream.toml``) and the variant (``USE_TRT_RTX=1`` selects
   ``torch_tensorrt_rtx``, as in upstream's setup.py);
2. gets the official wheel for the running Python and platform, through pip (the user's index
   configuration applies, pip checks the index's digest) or from ``TORCHTRT_BASE_WHEEL``, and
   refuses it unless its sha256 is the one recorded in ``upstream.toml``;
3. applies the quilt series in ``patches/`` (``patches/X.Y/series`` where a release line needs its
   own hunks; ``--patches-dir patches/staging`` for the patches not yet validated on a GPU) with
   ``git apply`` in a scratch repository, never with fuzz, and checks that every patch changed
   every file it names (CRLF sources of Windows wheels are patched as LF and restored);
4. writes ``<dist>-X.Y.Z+<label>-<tags>.whl``: the release's files with the patches, its METADATA
   with only the version changed, a new RECORD, and ``PATCHES.json`` (base wheel, its sha256,
   the series and each patch's sha256) in the dist-info.

Any failure raises ``BuildError`` with one message and leaves no wheel behind.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
# Patches are written against the upstream repository, whose Python package lives under py/.
UPSTREAM_PACKAGE_PREFIX = "py/"


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


def installed_torch_version() -> Optional[str]:
    """The torch version of the interpreter running the build, or None.

    pip builds in an isolated environment that hides the target's site-packages; ``python -I``
    ignores the PYTHONPATH that pip uses for that and sees the interpreter's own packages.
    """
    code = "import importlib.metadata as m; print(m.version('torch'))"
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


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
    """Split ``dist-version-tags.whl`` into (dist, version, tags)."""
    match = re.match(r"^([A-Za-z0-9_]+)-([^-]+)-(.+)\.whl$", name)
    if not match:
        raise BuildError(f"{name} is not a wheel file name")
    return match.group(1), match.group(2), match.group(3)


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
) -> Tuple[str, str, str]:
    """Check that ``wheel`` is a recorded official wheel; return (variant, version, sha256)."""
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


def _hunk_at(patch: Patch, file: str, line: int) -> str:
    """Describe the hunk of ``patch`` for ``file`` that starts at old line ``line``."""
    current, number = None, 0
    for text in patch.path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^diff --git a/\S+ b/(\S+)$", text)
        if match:
            current, number = match.group(1), 0
            continue
        if current == file and text.startswith("@@"):
            number += 1
            start = re.match(r"^@@ -(\d+)", text)
            if start and int(start.group(1)) == line:
                return f"hunk #{number} ({text.strip()})"
    return f"the hunk at line {line}"


def apply_series(tree: Path, patches: Sequence[Patch], label: str) -> None:
    """Apply ``patches`` in order to ``tree`` (laid out as the upstream repository).

    ``tree`` is made a git repository of its own first: ``git apply`` run inside another work
    tree resolves paths against that tree's root, skips every file and still exits 0.
    """
    if shutil.which("git") is None:
        raise BuildError("git is needed to apply the patches and was not found on PATH")
    git = ["git", "-c", "core.autocrlf=false"]
    # GIT_DIR, GIT_WORK_TREE and the like (set inside git hooks, for one) would redirect git
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(tree.parent)
    subprocess.run(git + ["init", "-q", str(tree)], check=True, env=env)
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


def write_patched_wheel(
    base: Path,
    patched_tree: Path,
    out_dir: Path,
    label: str,
    provenance: dict,
) -> Path:
    """Write the release wheel's files, with those under ``patched_tree`` replaced, re-versioned."""
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
        for info in src.infolist():
            if info.is_dir():
                continue
            arcname = info.filename
            if arcname == old_info + "RECORD":
                continue
            data = src.read(info)
            patched = patched_tree / arcname
            if arcname.startswith("torch_tensorrt/") and patched.is_file():
                data = patched.read_bytes()
            if arcname.startswith(old_info):
                arcname = new_info + arcname[len(old_info) :]
                if arcname == new_info + "METADATA":
                    text = data.decode("utf-8")
                    text, count = re.subn(
                        r"^Version: .*$",
                        f"Version: {new_version}",
                        text,
                        count=1,
                        flags=re.M,
                    )
                    if count != 1:
                        raise BuildError(f"{base.name}: METADATA has no Version field")
                    data = text.encode("utf-8")
            new_info_entry = zipfile.ZipInfo(arcname, date_time=info.date_time)
            new_info_entry.external_attr = info.external_attr
            new_info_entry.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(new_info_entry, data)
            records.append((arcname, _record_hash(data), str(len(data))))
        extra = json.dumps(provenance, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        dst.writestr(new_info + PROVENANCE_FILE, extra)
        records.append(
            (new_info + PROVENANCE_FILE, _record_hash(extra), str(len(extra)))
        )
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(records)
        writer.writerow((new_info + "RECORD", "", ""))
        dst.writestr(new_info + "RECORD", buffer.getvalue())
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
) -> Path:
    """Build the patched wheel into ``out_dir`` and return its path."""
    releases = load_upstream(upstream_toml)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torchtrt-patch-") as scratch_name:
        scratch = Path(scratch_name)
        if base_wheel:
            variant = choose_variant(use_trt_rtx) if use_trt_rtx else None
            wheel = Path(base_wheel).expanduser().resolve()
            variant, version, digest = check_base_wheel(
                wheel, releases, base_version, variant
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
                wheel, releases, version, variant
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
            wheel, tree / UPSTREAM_PACKAGE_PREFIX, scratch, label, provenance
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


# --------------------------------------------------------------------------------------------
# PEP 517 backend. prepare_metadata_for_build_wheel is deliberately absent: pip then takes the
# metadata from the wheel that build_wheel returns, which is the only metadata that is right.


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[dict] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    try:
        return build_from_environment(Path(wheel_directory)).name
    except BuildError as e:
        # One line, readable in pip's output; pip reports the non-zero exit itself.
        sys.stderr.write(f"\nerror: {e}\n\n")
        raise SystemExit(1) from None


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
        "--patches-dir",
        default=str(PATCHES_DIR),
        help="directory of the series to apply (default: patches/; patches/staging for "
        "patches not yet validated on a GPU)",
    )
    args = parser.parse_args(argv)
    try:
        wheel = build(
            Path(args.out_dir),
            base_version=args.base_version or os.environ.get("TORCHTRT_BASE_VERSION"),
            use_trt_rtx="1" if args.rtx else os.environ.get("USE_TRT_RTX"),
            base_wheel=args.base_wheel or os.environ.get("TORCHTRT_BASE_WHEEL"),
            patches_dir=Path(args.patches_dir),
        )
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
