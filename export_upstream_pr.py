"""Write the upstream pull requests: one directory per pull request under ``dist/upstream-pr/``.

    python export_upstream_pr.py [-o dist/upstream-pr] [--author "Name <mail>"]
                                 [--verify /path/to/TensorRT [--base REV] [--lint PYTHON ...]]

``PULL_REQUESTS`` below says which patch of ``patches/series``, which docs patch of
``patches/upstream-only/series`` and which GPU test file goes into which pull request, and which
pull request each is stacked on. Each pull request's directory holds its commits as
``git format-patch`` mails (the code patches, the test files as new files, the docs patches),
``PR.md`` (``docs/upstream/<name>.md`` plus the base commit, the commits, the order and how to
run the tests) and, where the change needs a feature request first, ``ISSUE.md``. A mail's
subject and body are the patch's DEP-3 Description and its date the patch's Last-Update (a test
file's mail takes the date of its pull request's last code patch), so the output depends only
on the repository's content and the identity.

Author and committer are ``--author`` or else git's ``user.name`` and ``user.email``; an empty
or placeholder identity (example or reserved domains, no-reply addresses other than GitHub's
per-user one, names such as "maintainers") is refused.

A patch, docs patch or test file that no pull request claims is an error: add it to
``PULL_REQUESTS``. A pull request none of whose patches is in the series yet is skipped with a
message (and so is every pull request stacked on it); one with only some of its patches, or
without its test files, is an error. Nothing fork-specific may be exported: the mails are
checked for ``FORK_ONLY`` words, trailing whitespace and CR line ends.

``--verify`` clones the given upstream repository (a checkout or a bare mirror) into scratch
directories, checks out ``--base`` (default: ``BASE_COMMIT``) and applies, for each pull
request, the ones it is stacked on and then its own mails with ``git am``; PR.md then names
that commit as verified. ``--lint PYTHON`` (repeatable, with ``--verify``) runs black, isort,
ruff and mypy from that interpreter's environment (and typos if installed there) on each pull
request's files after ``git am``, as upstream's pre-commit hooks do: the files the pull request
touches, with upstream's configuration; mypy as its hook, on ``py/`` only, with
``--ignore-missing-imports --scripts-are-modules``. Any finding fails the export.

The output directory is replaced only when everything succeeded.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent
# Paths relative to the repository root
SERIES = "patches/series"
DOCS_SERIES = "patches/upstream-only/series"
STAGING_SERIES = "patches/staging/series"
TEMPLATES = "docs/upstream"
# The GPU test files, and their helper modules if any: every one must belong to a pull request
# (the empty __init__.py files are upstream's own and are not exported)
TEST_GLOB = "tests/py/**/*.py"
# Upstream main the series was made for (2026-08-22); --verify --base REV checks another
BASE_COMMIT = "d7f2062810df37e4bbcfc9065b5f44f09aca7156"


@dataclass(frozen=True)
class TestFile:
    path: str
    subject: str
    body: str


@dataclass(frozen=True)
class PullRequest:
    """One upstream pull request.

    ``patches`` and ``docs`` are file names (``fnmatch`` patterns) in ``patches/series`` and
    ``patches/upstream-only/series``; ``stacked_on`` the name of the pull request whose commits
    this one's branch carries first; the template is ``docs/upstream/<name>.md`` and, with
    ``issue``, the feature request ``docs/upstream/<name>-issue.md``.
    """

    name: str
    patches: Tuple[str, ...]
    tests: Tuple[TestFile, ...]
    docs: Tuple[str, ...] = ()
    stacked_on: Optional[str] = None
    issue: bool = False


# In stack order: a pull request comes after the one it is stacked on. 0004 applies only on top
# of 0003 (its hunks' context), so the refit decision is stacked on keep_on_device.
PULL_REQUESTS: Tuple[PullRequest, ...] = (
    PullRequest(
        name="offload-gating",
        patches=(
            "0001-deallocate_module-noop-without-cuda-tensors.patch",
            "0002-mutable-module-offload-only-when-asked.patch",
        ),
        tests=(
            TestFile(
                "tests/py/dynamo/runtime/test_mutable_offload.py",
                "test: GPU regression tests for MutableTorchTensorRTModule offloading",
                "An embedding-heavy decoder-style model run with CUDA inputs through every lifecycle\n"
                "path of MutableTorchTensorRTModule (first compile, refit, attribute assignment,\n"
                "load_state_dict, recompile, save/load) with offload_module_to_cpu unset, False and\n"
                "True, on the C++ and the Python runtime; deallocate_module on a module without\n"
                "CUDA tensors; the device memory that offloading frees (pytorch/TensorRT#3728).",
            ),
        ),
        docs=("0001-docs-mutable-module-offloading.patch",),
    ),
    PullRequest(
        name="keep-on-device",
        patches=("0003-mutable-module-keep-on-device-and-aligned-calls.patch",),
        tests=(
            TestFile(
                "tests/py/dynamo/runtime/test_mutable_selective_offload.py",
                "test: keep_on_device and offloaded sub-modules called with CUDA inputs",
                "Kept sub-modules stay on the GPU through compile, refit, recompile and save/load;\n"
                "an unknown name lists the closest ones; an offloaded embedding called with CUDA\n"
                "ids runs where its weights are and returns on the ids' device with one warning;\n"
                "tied weights stay.",
            ),
        ),
        docs=("0002-docs-mutable-module-keep-on-device.patch",),
        stacked_on="offload-gating",
        issue=True,
    ),
    PullRequest(
        name="refit-decision",
        patches=("0004-mutable-module-refit-decision-from-weights.patch",),
        tests=(
            TestFile(
                "tests/py/dynamo/runtime/test_mutable_refit_decision.py",
                "test: refit decision from the weights, no false refits",
                "No refit after attribute assignments, weight reads, writes of equal values and device\n"
                "moves, with offloading off and on, and on a model whose engine output differs from\n"
                "PyTorch's beyond rtol/atol 5e-3 (5 seeds), without running or moving the model;\n"
                "every way of changing a weight (in place, .data, parameter reassignment,\n"
                "load_state_dict with and without assign, fused optimizer steps, peft LoRA fuse and\n"
                "unload, a rotary inv_freq change) ends with the refit or recompilation it needs\n"
                "(pytorch/TensorRT#4153).",
            ),
        ),
        docs=("0003-docs-mutable-module-refit-decision.patch",),
        stacked_on="keep-on-device",
    ),
    PullRequest(
        name="fast-refit",
        patches=("0005-*.patch",),
        tests=(
            TestFile(
                "tests/py/dynamo/runtime/test_mutable_fast_refit.py",
                "test: fast refit path of MutableTorchTensorRTModule",
                "GPU tests of the fast refit path of MutableTorchTensorRTModule.",
            ),
            TestFile(
                "tests/py/dynamo/runtime/test_mutable_second_gpu.py",
                "test: MutableTorchTensorRTModule on the second GPU",
                "Compile, refit, offload, keep_on_device and load with the model on cuda:1\n"
                "while cuda:0 is the current device.",
            ),
            TestFile(
                "tests/py/dynamo/runtime/test_mutable_fast_refit_attacks.py",
                "test: refits in place against every way of changing a weight",
                "Converters, weight name maps that pair by value, CUDA graphs, graph breaks,\n"
                "dtypes, offloading and save/load against the refit in place.",
            ),
        ),
        stacked_on="refit-decision",
    ),
)

# Words true only in the repository that builds the patched wheels: never in an exported commit
# (regular expressions, matched case-insensitively, with why)
FORK_ONLY = (
    (r"(?<![\w.])docs/", "a path of this repository's docs"),
    (r"gpu-validation", "this repository's GPU validation page"),
    (r"performance\.md|offloading\.md|upstream-pr", "a page of this repository"),
    (r"this repo(sitory)?\b", "this repository"),
    (r"\bfork\b", "this repository"),
    (r"(?<![\w.])2\.14\b", "a release line only this repository patches"),
    (r"\b(un)?patched\b", "the patched build"),
    (r"\bupstream\b", "upstream is where these commits go"),
    (
        r"(?<![\w.])patches/|\bseries\b|build_patched_wheel",
        "this repository's patch series",
    ),
    (r"!NVIDIA-INTERNAL", "upstream's dont-commit-upstream hook"),
)
# PR.md and ISSUE.md talk about upstream and its releases; they must not send reviewers here
FORK_ONLY_PROSE = tuple(
    (word, why)
    for word, why in FORK_ONLY
    if "upstream" not in word and "2\\.14" not in word and "series" not in word
)
# Identities that are not a person's
PLACEHOLDER_DOMAIN_SUFFIXES = (
    ".example",
    ".invalid",
    ".test",
    ".localhost",
    ".local",
    ".localdomain",
    ".internal",
)
PLACEHOLDER_DOMAINS = (
    "example.com",
    "example.org",
    "example.net",
    "localhost",
    "localdomain",
)
PLACEHOLDER_LOCAL_PARTS = (
    "noreply",
    "no-reply",
    "root",
    "nobody",
    "maintainer",
    "maintainers",
    "user",
    "admin",
    "test",
    "example",
    "you",
    "your.name",
    "name",
)
PLACEHOLDER_NAME_WORDS = (
    "maintainer",
    "maintainers",
    "example",
    "placeholder",
    "unknown",
    "nobody",
    "root",
    "admin",
    "user",
    "test",
    "bot",
    "noreply",
    "team",
)
# GitHub's per-user no-reply address (ID+login@users.noreply.github.com) is a real identity
GITHUB_NOREPLY = "users.noreply.github.com"
# Upstream's mypy hook: files it excludes, and the arguments pre-commit passes
MYPY_HOOK_EXCLUDE = re.compile(
    r"^py/torch_tensorrt/fx|^examples|^tests|^py/torch_tensorrt/dynamo/_experimental|"
    r"^tools|^docs|noxfile.py|setup.py|versions.py"
)
MYPY_HOOK_ARGS = ("--ignore-missing-imports", "--scripts-are-modules")
BLACK_EXCLUDE = re.compile(r"^examples/custom_converters/elu_converter/setup.py|^docs")
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


class ExportError(Exception):
    pass


# --- identity --------------------------------------------------------------------------------


def parse_identity(text: str) -> Tuple[str, str]:
    """``"Name <mail>"`` → (name, mail), refused when empty or a placeholder."""
    match = re.fullmatch(r"\s*([^<>]*?)\s*<\s*([^<>\s]+)\s*>\s*", text or "")
    if not match:
        raise ExportError(
            f"author {text!r} is not of the form 'Full Name <mail@domain>'"
        )
    name, mail = match.groups()
    problem = identity_problem(name, mail)
    if problem:
        raise ExportError(
            f"author {text!r} {problem}: the commits need the identity of the person who "
            "sends them (--author 'Full Name <mail@domain>' or git config user.name / user.email)"
        )
    return name, mail


def identity_problem(name: str, mail: str) -> Optional[str]:
    """Why (name, mail) is not a person's identity, or None."""
    if not re.search(r"[^\W\d_]", name):
        return "has no name"
    words = re.findall(r"[\w.-]+", name.lower())
    for word in words:
        if word in PLACEHOLDER_NAME_WORDS:
            return f"has the placeholder word {word!r} in its name"
        if re.fullmatch(r"[0-9a-f]{6,}", word) and re.search(r"\d", word):
            return f"has the hash-like word {word!r} in its name"
    if name.lower() in ("your name", "full name", "name", "author", "first last"):
        return "has a placeholder name"
    local, at, domain = mail.rpartition("@")
    if not at or not local or "." not in domain:
        return f"has no valid mail address ({mail!r})"
    domain = domain.lower().rstrip(".")
    if domain == GITHUB_NOREPLY or domain.endswith("." + GITHUB_NOREPLY):
        if domain != GITHUB_NOREPLY or not re.fullmatch(r"(\d+\+)?[\w.-]+", local):
            return f"has a malformed GitHub no-reply address ({mail!r})"
        return None
    if domain in PLACEHOLDER_DOMAINS or any(
        domain.endswith("." + d) for d in PLACEHOLDER_DOMAINS
    ):
        return f"has the placeholder domain {domain!r}"
    if domain.endswith(PLACEHOLDER_DOMAIN_SUFFIXES):
        return f"has a reserved domain ({domain!r})"
    if "noreply" in domain or "no-reply" in domain:
        return f"has a no-reply domain ({domain!r})"
    if local.lower() in PLACEHOLDER_LOCAL_PARTS:
        return f"has the placeholder address {mail!r}"
    return None


def git_identity() -> str:
    """``user.name <user.email>`` from git's configuration ('' where either is unset)."""
    values = []
    for key in ("user.name", "user.email"):
        out = subprocess.run(
            ["git", "-C", str(ROOT), "config", key], capture_output=True, text=True
        )
        values.append(out.stdout.strip() if out.returncode == 0 else "")
    if not all(values):
        return ""
    return f"{values[0]} <{values[1]}>"


def resolve_identity(author: Optional[str]) -> Tuple[str, str]:
    if author is not None:
        return parse_identity(author)
    configured = git_identity()
    if not configured:
        raise ExportError(
            "no author: pass --author 'Full Name <mail@domain>' or set git config "
            "user.name and user.email"
        )
    try:
        return parse_identity(configured)
    except ExportError as e:
        raise ExportError(f"git config identity refused: {e}") from None


# --- patches and mails -----------------------------------------------------------------------


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
    for required in ("Description", "Last-Update"):
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


@dataclass
class Mail:
    date: str
    subject: str
    body: str
    diff: str
    source: str  # the repository file it was made from

    def render(self, number: int, total: int, author: str) -> str:
        body = f"{self.body.rstrip()}\n" if self.body.strip() else ""
        return (
            "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"From: {author}\n"
            f"Date: {self.date}\n"
            f"Subject: [PATCH {number}/{total}] {self.subject}\n"
            "\n"
            f"{body}"
            "---\n"
            # Not stripped: a diff may end in a context line holding one space
            f"{self.diff if self.diff.endswith(chr(10)) else self.diff + chr(10)}"
            "-- \n"
            "torch-tensorrt-offload export\n"
            "\n"
        )


def mail_from_patch(patch: Path, root: Path = ROOT) -> Mail:
    fields, diff = split_dep3(patch)
    return Mail(
        date=mail_date(fields["Last-Update"][0]),
        subject=fields["Description"][0],
        body="\n".join(fields["Description"][1:]),
        diff=diff,
        source=patch.relative_to(root).as_posix(),
    )


def slug(subject: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-")[:52].rstrip("-")


# --- the plan: which files go into which pull request ----------------------------------------


@dataclass
class PlannedPR:
    pr: PullRequest
    patches: List[Path]
    docs: List[Path]
    tests: List[TestFile]
    template: str
    issue: Optional[str]
    ancestors: List["PlannedPR"] = field(default_factory=list)
    mails: List[Mail] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.template.splitlines()[0][2:].strip()

    @property
    def name(self) -> str:
        return self.pr.name


def _claim(
    names: Sequence[Path], patterns_of: Dict[str, Tuple[str, ...]], what: str
) -> Dict[str, List[Path]]:
    """Assign every file of a series to the one pull request whose patterns match it."""
    claimed: Dict[str, List[Path]] = {pr: [] for pr in patterns_of}
    for path in names:
        owners = [
            pr
            for pr, patterns in patterns_of.items()
            if any(fnmatch.fnmatchcase(path.name, p) for p in patterns)
        ]
        if not owners:
            raise ExportError(
                f"{what} lists {path.name}, which no pull request claims: add it to the "
                "patches (or docs) of one entry of PULL_REQUESTS in export_upstream_pr.py, "
                "or a new entry, so that it is exported"
            )
        if len(owners) > 1:
            raise ExportError(
                f"{path.name} is claimed by {', '.join(owners)}: give it to one pull request"
            )
        claimed[owners[0]].append(path)
    return claimed


def _pending(pr: PullRequest, root: Path, staged: Sequence[str]) -> str:
    """Why a pull request none of whose patches is in the series is not exported."""
    notes = []
    for pattern in pr.patches:
        files = sorted(p.name for p in (root / "patches").glob(pattern))
        staging = [s for s in staged if fnmatch.fnmatchcase(s, pattern)]
        if staging:
            notes.append(
                f"{', '.join(staging)} is in patches/staging/series (not yet run on a GPU), "
                "not in patches/series"
            )
        elif files:
            lines = sorted(
                s.parent.relative_to(root).as_posix() + "/series"
                for s in (root / "patches").glob("*/series")
                if s.parent.name != "staging"
                and any(p.name in files for p in read_series(s))
            )
            where = (
                f" (only the release lines' {', '.join(lines)} list it)"
                if lines
                else ""
            )
            notes.append(
                f"patches/{', '.join(files)} exists but is not in patches/series, the "
                f"series for upstream main{where}"
            )
        else:
            notes.append(f"no patch {pattern} in patches/series yet")
    tests = [t.path for t in pr.tests]
    present = [t for t in tests if (root / t).is_file()]
    absent = [t for t in tests if t not in present]
    if present:
        notes.append(f"its test file {', '.join(present)} exists")
    if absent:
        notes.append(f"its test file {', '.join(absent)} does not exist yet")
    return "; ".join(notes)


def plan(
    prs: Sequence[PullRequest] = PULL_REQUESTS, root: Path = ROOT
) -> Tuple[List[PlannedPR], List[str]]:
    """The pull requests to export, in stack order, and a message for each one skipped."""
    names = [pr.name for pr in prs]
    if len(set(names)) != len(names):
        raise ExportError("PULL_REQUESTS: two entries have the same name")
    for i, pr in enumerate(prs):
        if pr.stacked_on is not None and pr.stacked_on not in names[:i]:
            raise ExportError(
                f"PULL_REQUESTS: {pr.name} is stacked on {pr.stacked_on!r}, which is not an "
                "earlier entry"
            )
    series = root / SERIES
    docs_series = root / DOCS_SERIES
    code = _claim(
        read_series(series), {pr.name: pr.patches for pr in prs}, "patches/series"
    )
    docs = _claim(
        read_series(docs_series),
        {pr.name: pr.docs for pr in prs},
        "patches/upstream-only/series",
    )
    test_paths = {t.path for pr in prs for t in pr.tests}
    for path in sorted(root.glob(TEST_GLOB)):
        rel = path.relative_to(root).as_posix()
        if path.name != "__init__.py" and rel not in test_paths:
            raise ExportError(
                f"{rel} belongs to no pull request: add it to the tests of one entry of "
                "PULL_REQUESTS in export_upstream_pr.py"
            )
    staged = (
        [p.name for p in read_series(root / STAGING_SERIES)]
        if (root / STAGING_SERIES).is_file()
        else []
    )
    planned: Dict[str, PlannedPR] = {}
    skipped: List[str] = []
    order = [p.name for p in read_series(series)]
    for pr in prs:
        present = code[pr.name]
        missing_patches = [
            p
            for p in pr.patches
            if not any(fnmatch.fnmatchcase(q.name, p) for q in present)
        ]
        missing_tests = [t.path for t in pr.tests if not (root / t.path).is_file()]
        if pr.stacked_on is not None and pr.stacked_on not in planned:
            skipped.append(
                f"{pr.name}: not exported: it is stacked on {pr.stacked_on}, which is not exported"
            )
            continue
        if not present:
            skipped.append(f"{pr.name}: not exported: {_pending(pr, root, staged)}")
            continue
        if missing_patches:
            raise ExportError(
                f"{pr.name}: patches/series has {', '.join(p.name for p in present)} but not "
                f"{', '.join(missing_patches)}: a pull request is exported whole or not at all"
            )
        if missing_tests:
            raise ExportError(
                f"{pr.name}: its patches are in patches/series but its test files "
                f"{', '.join(missing_tests)} do not exist: add them or change its entry in "
                "PULL_REQUESTS"
            )
        ancestors: List[PlannedPR] = []
        parent = pr.stacked_on
        while parent is not None:
            ancestors.insert(0, planned[parent])
            parent = planned[parent].pr.stacked_on
        first = min(order.index(p.name) for p in present)
        for a in ancestors:
            if max(order.index(p.name) for p in a.patches) > first:
                raise ExportError(
                    f"{pr.name} is stacked on {a.name}, but patches/series puts "
                    f"{present[0].name} before that pull request's patches"
                )
        template = _template(root, f"{pr.name}.md")
        if not template.startswith("# "):
            raise ExportError(
                f"{TEMPLATES}/{pr.name}.md must start with '# ' and the title"
            )
        issue = _template(root, f"{pr.name}-issue.md") if pr.issue else None
        planned[pr.name] = PlannedPR(
            pr, present, docs[pr.name], list(pr.tests), template, issue, ancestors
        )
    for pr in prs:
        if pr.name not in planned and docs[pr.name]:
            raise ExportError(
                f"{pr.name} is not exported but patches/upstream-only/series has its docs "
                f"{', '.join(p.name for p in docs[pr.name])}"
            )
    return list(planned.values()), skipped


def build_mails(item: PlannedPR, root: Path = ROOT) -> List[Mail]:
    mails = [mail_from_patch(p, root) for p in item.patches]
    date = mails[-1].date
    for test in item.tests:
        source = (root / test.path).read_text(encoding="utf-8")
        mails.append(
            Mail(
                date,
                test.subject,
                test.body,
                new_file_diff(test.path, source),
                test.path,
            )
        )
    mails += [mail_from_patch(p, root) for p in item.docs]
    return mails


def fork_only_findings(mails: Sequence[Mail]) -> List[str]:
    """Fork-only words, trailing whitespace and CR line ends in what the mails add."""
    findings = []
    for mail in mails:
        lines = [("message", 0, mail.subject)] + [
            ("message", 0, line) for line in mail.body.splitlines()
        ]
        path, number = "", 0
        for line in mail.diff.splitlines(keepends=True):
            if line.startswith("+++ b/"):
                path = line[6:].strip()
                continue
            hunk = re.match(r"^@@ -\d+(?:,\d+)? \+(\d+)", line)
            if hunk:
                number = int(hunk.group(1))
                continue
            if line.startswith("+"):
                lines.append((path, number, line[1:]))
                number += 1
            elif line.startswith(" "):
                number += 1
        for where, n, text in lines:
            if where == "message":
                place = f"{mail.source}: commit message"
            elif where == mail.source:
                place = f"{where}:{n}"
            else:
                place = f"{mail.source}: {where}:{n}"
            if text.endswith("\r\n") or text.endswith("\r"):
                findings.append(f"{place}: CR line end")
            stripped = text.rstrip("\r\n")
            if stripped != stripped.rstrip() and not where.startswith("docs/"):
                findings.append(f"{place}: trailing whitespace")
            findings += _pattern_findings(place, stripped, FORK_ONLY)
    return findings


def prose_findings(name: str, text: str) -> List[str]:
    findings = []
    for n, line in enumerate(text.splitlines(), start=1):
        findings += _pattern_findings(f"{name}:{n}", line, FORK_ONLY_PROSE)
    return findings


def _pattern_findings(
    place: str, line: str, patterns: Sequence[Tuple[str, str]]
) -> List[str]:
    """One finding for each of ``patterns`` (regular expression, why) that ``line`` matches."""
    findings = []
    for pattern, why in patterns:
        match = re.search(pattern, line, re.I)
        if match:
            findings.append(f"{place}: {match.group(0)!r} ({why}): {line.strip()}")
    return findings


# --- PR.md -----------------------------------------------------------------------------------


def _template(root: Path, name: str) -> str:
    path = root / TEMPLATES / name
    if not path.is_file():
        raise ExportError(f"{TEMPLATES}/{name} is missing")
    return path.read_text(encoding="utf-8").rstrip() + "\n"


def pr_markdown(
    item: PlannedPR, base: str, verified: bool, lint_summary: Sequence[str]
) -> str:
    """The template, with the base, the stack, the commits and the test command before
    its "## Type of change" section (or at the end)."""
    own = [m.subject for m in item.mails]
    text = item.template
    lines = ["## Base, commits and how to run the tests", ""]
    if verified:
        after = (
            " after those of the pull requests it is stacked on"
            if item.ancestors
            else ""
        )
        lines.append(
            f"Base: upstream `main` at `{base}`; the commits below apply there with "
            f"`git am`{after}."
        )
    else:
        lines.append(
            f"Base: upstream `main` at `{base}` (made for that commit; this export did "
            "not check that the commits apply)."
        )
    lines.append("")
    if item.ancestors:
        lines.append("Stacked on, in this order (merge those first):")
        lines.append("")
        lines += [f"- {a.title}" for a in item.ancestors]
        lines += [
            "",
            f"This branch carries their commits first; this pull request is the last "
            f"{len(own)}:",
        ]
    else:
        lines.append("Commits:")
    lines.append("")
    lines += [f"{n}. {s}" for n, s in enumerate(own, start=1)]
    tests = " ".join(t.path.replace("tests/py/dynamo/", "", 1) for t in item.tests)
    lines += [
        "",
        "The new tests need a CUDA GPU (they skip without one). From a build of this "
        "branch, as the L2 runtime tier runs them:",
        "",
        "```",
        f"cd tests/py/dynamo && python -m pytest -ra {tests}",
        "```",
    ]
    if lint_summary:
        lines += [
            "",
            "Linters on the files this pull request touches, after `git am`, with "
            "upstream's configuration:",
            "",
        ]
        lines += [f"- {s}" for s in lint_summary]
    section = "\n".join(lines) + "\n"
    marker = "\n## Type of change"
    if marker in text:
        head, tail = text.split(marker, 1)
        return f"{head.rstrip()}\n\n{section}{marker}{tail}"
    return f"{text.rstrip()}\n\n{section}"


def index_markdown(
    planned: Sequence[PlannedPR], skipped: Sequence[str], base: str
) -> str:
    lines = [
        "# Upstream pull requests",
        "",
        f"Base: upstream `main` at `{base}`. Open and merge them in this order; a stacked pull",
        "request's branch carries the commits of the ones before it.",
        "",
        "| order | directory | stacked on | commits |",
        "|---|---|---|---|",
    ]
    for n, item in enumerate(planned, start=1):
        lines.append(
            f"| {n} | `{item.name}/` | {item.pr.stacked_on or 'main'} | {len(item.mails)} |"
        )
    lines += [
        "",
        "A branch for each, in a clone of upstream (DIST: this directory):",
        "",
        "```",
    ]
    for item in planned:
        lines.append(f"git checkout -b {item.name} {item.pr.stacked_on or base}")
        lines.append(f"git am $DIST/{item.name}/*.patch")
    lines.append("```")
    issues = [i.name for i in planned if i.pr.issue]
    if issues:
        lines += [
            "",
            "Where a directory has `ISSUE.md`, open that feature request first and put its "
            "number where PR.md says `#ISSUE`.",
        ]
    if skipped:
        lines += ["", "Not exported:", ""] + [f"- {s}" for s in skipped]
    return "\n".join(lines) + "\n"


# --- verify and lint -------------------------------------------------------------------------


def _git(*args: str, cwd: Optional[Path] = None, env: Optional[dict] = None) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise ExportError(f"git {' '.join(args)}: {(out.stderr or out.stdout).strip()}")
    return out.stdout.strip()


def resolve_base(upstream: Path, base: str) -> str:
    try:
        return _git("-C", str(upstream), "rev-parse", "--verify", f"{base}^{{commit}}")
    except ExportError:
        raise ExportError(f"{upstream} has no commit {base}") from None


def verify_and_lint(
    planned: Sequence[PlannedPR],
    dirs: Dict[str, Path],
    upstream: Path,
    base: str,
    identity: Tuple[str, str],
    linters: Sequence[str],
) -> Dict[str, List[str]]:
    """git am every pull request (after its stack) on ``base``; lint; return lint summaries."""
    env = dict(os.environ)
    env.update(
        GIT_COMMITTER_NAME=identity[0],
        GIT_COMMITTER_EMAIL=identity[1],
        GIT_CONFIG_NOSYSTEM="1",
    )
    summaries: Dict[str, List[str]] = {}
    failures: List[str] = []
    with tempfile.TemporaryDirectory(prefix="upstream-pr-") as scratch:
        for item in planned:
            clone = Path(scratch) / item.name
            _git("clone", "-q", "--shared", "--no-checkout", str(upstream), str(clone))
            _git("-C", str(clone), "checkout", "-q", "--detach", base)
            for step in item.ancestors + [item]:
                patches = sorted(dirs[step.name].glob("*.patch"))
                out = subprocess.run(
                    ["git", "-C", str(clone), "am", "-q", *map(str, patches)],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if out.returncode != 0:
                    raise ExportError(
                        f"{item.name}: git am of {step.name} failed on {base}: "
                        f"{(out.stderr or out.stdout).strip()}"
                    )
            print(f"{item.name}: git am applies on {base}", flush=True)
            if linters:
                files = _git(
                    "-C",
                    str(clone),
                    "diff",
                    "--name-only",
                    f"HEAD~{len(item.mails)}",
                    "HEAD",
                ).splitlines()
                summary, failed = lint(clone, files, linters)
                summaries[item.name] = summary
                failures += [f"{item.name}: {f}" for f in failed]
    if failures:
        raise ExportError("linters found problems:\n  " + "\n  ".join(failures))
    return summaries


def _tool_version(python: str, module: str) -> str:
    out = subprocess.run(
        [python, "-c", f"import importlib.metadata as m; print(m.version({module!r}))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def lint(
    clone: Path, files: Sequence[str], linters: Sequence[str]
) -> Tuple[List[str], List[str]]:
    """Run each environment's linters on ``files`` in ``clone``; (summary, failures)."""
    py = [f for f in files if f.endswith((".py", ".pyi"))]
    selected = {
        "black": [f for f in py if not BLACK_EXCLUDE.search(f)],
        "isort": py,
        "ruff": py,
        "mypy": [f for f in py if not MYPY_HOOK_EXCLUDE.search(f)],
        "typos": list(files),
    }
    summary: List[str] = []
    failed: List[str] = []
    for python in linters:
        typos = Path(python).parent / "typos"
        commands = {
            "black": [python, "-m", "black", "--check"],
            "isort": [python, "-m", "isort", "--check-only", "--diff"],
            "ruff": [python, "-m", "ruff", "check"],
            "mypy": [python, "-m", "mypy", *MYPY_HOOK_ARGS],
            "typos": [str(typos)] if typos.is_file() else [],
        }
        for tool, command in commands.items():
            targets = selected[tool]
            if not command or not targets:
                continue
            version = _tool_version(python, tool) or "?"
            out = subprocess.run(
                command + targets, cwd=clone, capture_output=True, text=True
            )
            output = (out.stdout + out.stderr).strip()
            print(f"$ {tool} {version} ({python}): {' '.join(targets)}")
            if output:
                print(output)
            print(f"exit {out.returncode}", flush=True)
            if out.returncode == 0:
                summary.append(f"{tool} {version}: clean ({', '.join(targets)})")
            else:
                summary.append(f"{tool} {version}: exit {out.returncode}")
                failed.append(f"{tool} {version} (exit {out.returncode}):\n{output}")
    return summary, failed


# --- export ----------------------------------------------------------------------------------


def export(
    out_dir: Path,
    identity: Tuple[str, str],
    upstream: Optional[Path] = None,
    base: str = BASE_COMMIT,
    linters: Sequence[str] = (),
    root: Path = ROOT,
    prs: Sequence[PullRequest] = PULL_REQUESTS,
    forbid_fork_only: bool = True,
) -> Tuple[List[PlannedPR], List[str]]:
    """Write every pull request's directory; replace ``out_dir`` only when all succeeded.

    ``forbid_fork_only=False`` writes mails that carry fork-only words (to inspect them); the
    command line never does."""
    if linters and upstream is None:
        raise ExportError("--lint needs --verify (the linters run on upstream's tree)")
    planned, skipped = plan(prs, root)
    if not planned:
        raise ExportError("no pull request to export")
    author = f"{identity[0]} <{identity[1]}>"
    findings: List[str] = []
    for item in planned:
        item.mails = build_mails(item, root)
        findings += fork_only_findings(item.mails)
    if findings and forbid_fork_only:
        raise ExportError(
            "fork-only or malformed lines in what would be exported:\n  "
            + "\n  ".join(findings)
        )
    if upstream is not None:
        base = resolve_base(upstream, base)
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".upstream-pr-", dir=out_dir.parent))
    try:
        dirs: Dict[str, Path] = {}
        for item in planned:
            target = staging / item.name
            target.mkdir()
            dirs[item.name] = target
            for n, mail in enumerate(item.mails, start=1):
                name = f"{n:04d}-{slug(mail.subject)}.patch"
                (target / name).write_text(
                    mail.render(n, len(item.mails), author), encoding="utf-8"
                )
        summaries: Dict[str, List[str]] = {}
        if upstream is not None:
            summaries = verify_and_lint(
                planned, dirs, upstream, base, identity, linters
            )
        prose: List[str] = []
        for item in planned:
            text = pr_markdown(
                item, base, upstream is not None, summaries.get(item.name, ())
            )
            prose += prose_findings(f"{item.name}/PR.md", text)
            (dirs[item.name] / "PR.md").write_text(text, encoding="utf-8")
            if item.issue is not None:
                prose += prose_findings(f"{item.name}/ISSUE.md", item.issue)
                (dirs[item.name] / "ISSUE.md").write_text(item.issue, encoding="utf-8")
        if prose:
            raise ExportError(
                "PR.md or ISSUE.md would send reviewers to this repository:\n  "
                + "\n  ".join(prose)
            )
        (staging / "README.md").write_text(
            index_markdown(planned, skipped, base), encoding="utf-8"
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return planned, skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out-dir", default="dist/upstream-pr")
    parser.add_argument(
        "--author",
        metavar="'NAME <MAIL>'",
        help="author and committer (default: git config user.name and user.email)",
    )
    parser.add_argument(
        "--verify", metavar="UPSTREAM", help="git repository of pytorch/TensorRT"
    )
    parser.add_argument(
        "--base",
        default=BASE_COMMIT,
        help=f"upstream commit to apply to with --verify (default {BASE_COMMIT[:10]})",
    )
    parser.add_argument(
        "--lint",
        metavar="PYTHON",
        action="append",
        default=[],
        help="with --verify: run the linters installed for this interpreter (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        identity = resolve_identity(args.author)
        planned, skipped = export(
            Path(args.out_dir),
            identity,
            Path(args.verify) if args.verify else None,
            args.base,
            args.lint,
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out_dir)
    for item in planned:
        stack = f" (stacked on {item.pr.stacked_on})" if item.pr.stacked_on else ""
        print(f"{out / item.name}: {len(item.mails)} commits{stack}")
    for message in skipped:
        print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
