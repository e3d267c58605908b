"""Write the upstream pull request: ``dist/upstream-pr/`` with git format-patch files and PR.md.

    python export_upstream_pr.py [-o dist/upstream-pr] [--verify /path/to/TensorRT]

The patches are, in order: ``patches/series`` (the code, as applied to upstream main), the GPU
test files as new files, and ``patches/upstream-only/series`` (upstream's docs). Each
becomes one ``[PATCH n/N]`` mail whose subject and body are the patch's DEP-3 Description and
whose date is its Last-Update, so the output depends only on the repository's content.
``PR.md`` is ``docs/upstream-pr.md`` with the list of patches appended.

``--verify`` clones the given upstream repository (a checkout or a bare mirror) into a scratch
directory and applies the patches with ``git am``; it prints the upstream commit they apply to.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent
PR_TEMPLATE = ROOT / "docs" / "upstream-pr.md"
TEST_AUTHOR = (
    "Seed e4d3161d maintainers <maintainers@users.noreply.h-seed-e4d3161d.example>"
)
# (path, subject, body) of each GPU test file, sent as a new file after the code patches
TEST_FILES = [
    (
        "tests/py/dynamo/runtime/test_mutable_offload.py",
        "test: GPU regression tests for MutableTorchTensorRTModule offloading",
        "An embedding-heavy decoder-style model run with CUDA inputs through every lifecycle path\n"
        "of MutableTorchTensorRTModule (first compile, refit, attribute assignment,\n"
        "load_state_dict, recompile, save/load) with offload_module_to_cpu unset, False and True,\n"
        "on the C++ and the Python runtime (pytorch/TensorRT#3728).",
    ),
    (
        "tests/py/dynamo/runtime/test_mutable_selective_offload.py",
        "test: keep_on_device and offloaded sub-modules called with CUDA inputs",
        "Kept sub-modules stay on the GPU through compile, refit, recompile and save/load; an\n"
        "unknown name lists the closest ones; an offloaded embedding called with CUDA ids runs\n"
        "where its weights are and returns on the ids' device with one warning; tied weights stay.",
    ),
    (
        "tests/py/dynamo/runtime/test_mutable_refit_decision.py",
        "test: refit decision from the weights, no false refits",
        "No refit after attribute assignments and weight reads, with offloading off and on and on\n"
        "a model whose engine output differs from PyTorch's beyond rtol/atol 5e-3 (5 seeds), and\n"
        "the model is neither run nor moved; every mutation style (in-place, .data.copy_,\n"
        "load_state_dict with and without assign, reassignment, added sub-module, zero adapter)\n"
        "refits or recompiles (pytorch/TensorRT#4153).",
    ),
]
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


class ExportError(Exception):
    pass


def read_series(series: Path) -> List[Path]:
    names = [line.split("#", 1)[0].strip() for line in series.read_text().splitlines()]
    return [(series.parent / n).resolve() for n in names if n]


def split_dep3(patch: Path) -> Tuple[dict, str]:
    """Return (DEP-3 fields, diff text). Folded field lines are joined; ' .' is a blank line."""
    text = patch.read_text(encoding="utf-8")
    start = text.find("\ndiff --git ")
    if start < 0:
        raise ExportError(f"{patch.name}: no diff")
    header, diff = text[:start], text[start + 1 :]
    fields: dict = {}
    key = None
    for line in header.splitlines():
        if line == "---":
            break
        if line.startswith(" ") and key:
            fields[key].append("" if line.strip() == "." else line[1:])
            continue
        match = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
        if match:
            key = match.group(1)
            fields[key] = [match.group(2)]
    for required in ("Description", "Author", "Last-Update"):
        if required not in fields:
            raise ExportError(f"{patch.name}: DEP-3 field {required} missing")
    return fields, diff


def mail_date(day: str) -> str:
    """``2026-11-23`` → ``Mon, 23 Nov 2026 00:00:00 +0000`` (computed, no locale)."""
    d = datetime.date.fromisoformat(day)
    return f"{WEEKDAYS[d.weekday()]}, {d.day} {MONTHS[d.month - 1]} {d.year} 00:00:00 +0000"


def new_file_diff(path: str, content: str) -> str:
    lines = content.splitlines()
    body = "".join(f"+{line}\n" for line in lines)
    return (
        f"diff --git a/{path} b/{path}\n"
        "new file mode 100644\n"
        "--- /dev/null\n"
        f"+++ b/{path}\n"
        f"@@ -0,0 +1,{len(lines)} @@\n" + body
    )


def format_patch(
    number: int, total: int, author: str, date: str, subject: str, body: str, diff: str
) -> str:
    return (
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        f"From: {author}\n"
        f"Date: {date}\n"
        f"Subject: [PATCH {number}/{total}] {subject}\n"
        "\n"
        f"{body.rstrip()}\n"
        "---\n"
        # Not stripped: a diff may end in a context line holding one space
        f"{diff if diff.endswith(chr(10)) else diff + chr(10)}"
        "-- \n"
        "torch-tensorrt-offload export\n"
        "\n"
    )


def slug(subject: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-")[:52].rstrip("-")


def mail_from_patch(patch: Path) -> Tuple[str, str, str, str, str]:
    """(author, date, subject, body, diff) of a DEP-3 patch."""
    fields, diff = split_dep3(patch)
    return (
        fields["Author"][0],
        mail_date(fields["Last-Update"][0]),
        fields["Description"][0],
        "\n".join(fields["Description"][1:]),
        diff,
    )


def export(out_dir: Path) -> List[Path]:
    code = read_series(ROOT / "patches" / "series")
    docs = read_series(ROOT / "patches" / "upstream-only" / "series")
    mails = [mail_from_patch(p) for p in code]
    # Test mails carry the date of the last code patch, so the output stays reproducible
    for path, subject, body in TEST_FILES:
        source = (ROOT / path).read_text(encoding="utf-8")
        diff = new_file_diff(path, source)
        mails.append((TEST_AUTHOR, mails[-1][1], subject, body, diff))
    mails += [mail_from_patch(p) for p in docs]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    written = []
    for n, (author, date, subject, body, diff) in enumerate(mails, start=1):
        name = f"{n:04d}-{slug(subject)}.patch"
        path = out_dir / name
        path.write_text(
            format_patch(n, len(mails), author, date, subject, body, diff),
            encoding="utf-8",
        )
        written.append(path)
    listing = "\n".join(f"{n}. `{p.name}`" for n, p in enumerate(written, start=1))
    pr = PR_TEMPLATE.read_text(encoding="utf-8").rstrip()
    (out_dir / "PR.md").write_text(
        f"{pr}\n\n## Patches\n\nIn this directory, apply with `git am *.patch`:\n\n{listing}\n",
        encoding="utf-8",
    )
    return written


def verify(patches: Sequence[Path], upstream: Path) -> str:
    """Apply ``patches`` with ``git am`` on a scratch clone of ``upstream``; return its HEAD."""
    with tempfile.TemporaryDirectory(prefix="upstream-pr-") as scratch:
        clone = Path(scratch) / "TensorRT"
        subprocess.run(
            ["git", "clone", "-q", "--shared", str(upstream), str(clone)], check=True
        )
        head = subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        env_args = [
            "-c",
            "user.name=export",
            "-c",
            "user.email=export@localhost",
        ]
        out = subprocess.run(
            [
                "git",
                *env_args,
                "-C",
                str(clone),
                "am",
                "-q",
                *(str(p.resolve()) for p in patches),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise ExportError(
                f"git am failed on {head}: {out.stderr.strip() or out.stdout}"
            )
        return head


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out-dir", default="dist/upstream-pr")
    parser.add_argument(
        "--verify", metavar="UPSTREAM", help="git repository of pytorch/TensorRT"
    )
    args = parser.parse_args(argv)
    try:
        patches = export(Path(args.out_dir))
        for p in patches:
            print(p)
        if args.verify:
            head = verify(patches, Path(args.verify))
            print(f"all {len(patches)} patches apply with git am to {head}")
    except (ExportError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
