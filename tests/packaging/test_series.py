"""The patch series applies to every supported release wheel and does what it says."""

import ast
import py_compile
import re

import pytest
from conftest import ROOT, SUPPORTED

MTTM = "py/torch_tensorrt/dynamo/runtime/_MutableTorchTensorRTModule.py"
UTILS = "py/torch_tensorrt/dynamo/utils.py"
OFFLOAD = "offload_module_to_cpu"
DEP3_FIELDS = ("Description", "Author", "Origin", "Bug", "Forwarded", "Last-Update")


def _all_series():
    return sorted((ROOT / "patches").glob("**/series"))


def _all_patch_files():
    return sorted((ROOT / "patches").glob("**/*.patch"))


# The shipped series; a staging directory (patches not yet run on a GPU) joins it when one exists
SERIES_DIRS = [ROOT / "patches"] + [
    d for d in [ROOT / "patches" / "staging"] if (d / "series").is_file()
]
series_dirs = pytest.mark.parametrize(
    "patches_dir", SERIES_DIRS, ids=lambda p: p.relative_to(ROOT).as_posix()
)


@series_dirs
@pytest.mark.parametrize("variant,version", SUPPORTED, ids=lambda v: str(v))
def test_series_applies_and_byte_compiles(
    patched_trees, variant, version, patches_dir, tmp_path
):
    tree = patched_trees(variant, version, patches_dir)
    for name in (MTTM, UTILS):
        py_compile.compile(
            str(tree / name), cfile=str(tmp_path / "out.pyc"), doraise=True
        )


def _enclosing_if_tests(tree: ast.AST):
    """Map every node to the list of `if` tests that enclose it (body only, not orelse)."""
    guards = {}

    def visit(node, tests):
        guards[node] = tests
        if isinstance(node, ast.If):
            for child in node.body:
                visit(child, tests + [node.test])
            for child in node.orelse:
                visit(child, tests)
            visit(node.test, tests)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, tests)

    visit(tree, [])
    return guards


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _mentions_offload(test: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Attribute) and n.attr == OFFLOAD)
        or (isinstance(n, ast.Name) and n.id == OFFLOAD)
        for n in ast.walk(test)
    )


def _mttm_init(module: ast.Module):
    """MutableTorchTensorRTModule.__init__ and its keyword-only defaults by name."""
    mttm_class = next(
        n
        for n in module.body
        if isinstance(n, ast.ClassDef) and n.name == "MutableTorchTensorRTModule"
    )
    init = next(
        n
        for n in mttm_class.body
        if isinstance(n, ast.FunctionDef) and n.name == "__init__"
    )
    return init, dict(zip((a.arg for a in init.args.kwonlyargs), init.args.kw_defaults))


@series_dirs
@pytest.mark.parametrize("variant,version", SUPPORTED, ids=lambda v: str(v))
def test_every_offload_in_mutable_module_is_gated(
    patched_trees, variant, version, patches_dir
):
    source = (patched_trees(variant, version, patches_dir) / MTTM).read_text()
    module = ast.parse(source)
    guards = _enclosing_if_tests(module)
    functions = {n.name: n for n in ast.walk(module) if isinstance(n, ast.FunctionDef)}
    offload_helper = functions["_offload_original_model"]
    helper_nodes = set(ast.walk(offload_helper))

    dealloc_calls = [
        n
        for n in ast.walk(module)
        if isinstance(n, ast.Call) and _called_name(n) == "deallocate_module"
    ]
    helper_calls = [
        n
        for n in ast.walk(module)
        if isinstance(n, ast.Call) and _called_name(n) == "_offload_original_model"
    ]
    assert (
        dealloc_calls
    ), "no deallocate_module call found: the check would prove nothing"
    for call in dealloc_calls:
        assert call in helper_nodes or any(
            _mentions_offload(t) for t in guards[call]
        ), f"line {call.lineno}: deallocate_module is not gated by {OFFLOAD}"
    # The helper is reached only under the setting: from compile, refit, the refit check, load
    callers = set()
    for call in helper_calls:
        assert any(
            _mentions_offload(t) for t in guards[call]
        ), f"line {call.lineno}: _offload_original_model is not gated by {OFFLOAD}"
        callers.update(
            name
            for name, fn in functions.items()
            if call in set(ast.walk(fn)) and name != "_offload_original_model"
        )
    assert {"compile", "refit_gm", "load"} <= callers
    # The refit check decides from the weights (0004): it neither moves nor runs the model
    check = ast.unparse(functions["update_refit_condition"])
    assert "update_refit_condition" not in callers
    assert ".to(" not in check and "original_model(" not in check
    # Selective offload (0003) moves tensors itself; only the gated helper may call it
    selective = [
        n
        for n in ast.walk(module)
        if isinstance(n, ast.Call) and _called_name(n) == "_offload_all_but_kept"
    ]
    assert all(call in helper_nodes for call in selective)

    init, kwonly = _mttm_init(module)
    assert OFFLOAD in kwonly, f"{OFFLOAD} is not a keyword of __init__"
    assert ast.unparse(kwonly[OFFLOAD]) == "_defaults.OFFLOAD_MODULE_TO_CPU"
    assert f"{OFFLOAD} (bool)" in ast.get_docstring(init)
    assert 'additional_settings.get("offload_module_to_cpu"' not in source


@pytest.mark.parametrize("variant,version", SUPPORTED, ids=lambda v: str(v))
def test_default_is_false(patched_trees, variant, version):
    defaults = (
        patched_trees(variant, version) / "py/torch_tensorrt/dynamo/_defaults.py"
    ).read_text()
    assert re.search(r"^OFFLOAD_MODULE_TO_CPU = False$", defaults, re.M)


@pytest.mark.parametrize("variant,version", SUPPORTED, ids=lambda v: str(v))
def test_deallocate_module_returns_early_without_cuda(patched_trees, variant, version):
    module = ast.parse((patched_trees(variant, version) / UTILS).read_text())
    fn = next(
        n
        for n in ast.walk(module)
        if isinstance(n, ast.FunctionDef) and n.name == "deallocate_module"
    )
    first = fn.body[1]  # body[0] is the docstring
    assert isinstance(first, ast.If) and "is_cuda" in ast.unparse(first.test)
    assert isinstance(first.body[0], ast.Return)


@pytest.mark.parametrize("series", _all_series(), ids=lambda p: p.parent.name)
def test_series_lists_existing_patches(series):
    listed = [
        line.split("#", 1)[0].strip()
        for line in series.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert listed
    for name in listed:
        assert (series.parent / name).is_file(), f"{series}: {name} does not exist"


def dep3_problems(header: str) -> list:
    """What is wrong with a DEP-3 patch header (the text before the first ``---`` line)."""
    lines = header.splitlines()
    problems = []
    if not lines or not re.match(r"^(Description|Subject): \S", lines[0]):
        problems.append("the first line is not the Description")
    elif len(lines[0]) > 80:
        problems.append(f"first line of {len(lines[0])} characters (at most 80)")
    fields = {}
    for line in lines:
        field = re.match(r"^([A-Za-z-]+): (.*)$", line)
        if field:
            fields[field.group(1)] = field.group(2).strip()
        elif not re.match(r"^ \S", line):
            problems.append(f"neither a field nor a continuation: {line!r}")
    problems += [f"DEP-3 {f} missing" for f in DEP3_FIELDS if not fields.get(f)]
    # Forwarded: no, not-needed, or where it was forwarded to (a URL; DEP-3 also allows yes)
    forwarded = fields.get("Forwarded", "no")
    if forwarded not in ("no", "not-needed", "yes") and not re.match(
        r"^https?://\S+$", forwarded
    ):
        problems.append(f"Forwarded: {forwarded!r} is not a DEP-3 value")
    origin = fields.get("Origin", "vendor")
    if not re.match(
        r"^((upstream|backport|vendor|other)(, \S+)?|https?://\S+)$", origin
    ):
        problems.append(f"Origin: {origin!r} is not a DEP-3 value")
    if not re.match(r"^\d{4}-\d{2}-\d{2}$", fields.get("Last-Update", "2000-01-01")):
        problems.append("Last-Update is not YYYY-MM-DD")
    if not re.match(r"^https?://\S+$", fields.get("Bug", "https://x")):
        problems.append("Bug is not a URL")
    return problems


GOOD_HEADER = (
    "Description: short\n long\n .\n more\nAuthor: A <a@b>\nOrigin: vendor\n"
    "Bug: https://example.org/1\nForwarded: no\nLast-Update: 2026-11-24"
)


@pytest.mark.parametrize(
    "header,problem",
    [
        (GOOD_HEADER.replace("Forwarded: no", "Forwarded: maybe"), "Forwarded"),
        (GOOD_HEADER.replace("Forwarded: no\n", ""), "Forwarded missing"),
        (GOOD_HEADER.replace("short", "x" * 80), "first line of 93"),
        ("Author: A <a@b>\n" + GOOD_HEADER, "first line is not the Description"),
        (GOOD_HEADER.replace("Origin: vendor", "Origin: us"), "Origin"),
        (GOOD_HEADER.replace("2026-11-24", "today"), "Last-Update"),
        (GOOD_HEADER.replace(" long", "long"), "neither a field"),
    ],
)
def test_dep3_check_finds_each_problem(header, problem):
    assert dep3_problems(GOOD_HEADER) == []
    found = dep3_problems(header)
    assert len(found) == 1 and problem in found[0], found


@pytest.mark.parametrize("patch", _all_patch_files(), ids=lambda p: p.name)
def test_patch_has_dep3_header_and_git_paths(patch):
    text = patch.read_text()
    header = text.split("\n---\n", 1)[0]
    assert dep3_problems(header) == [], patch.name
    diffs = re.findall(r"^diff --git a/(\S+) b/(\S+)$", text, re.M)
    # Patches for release wheels touch only the package; upstream-only ones also its docs
    allowed = ("py/", "docsrc/") if patch.parent.name == "upstream-only" else ("py/",)
    assert diffs and all(a == b and a.startswith(allowed) for a, b in diffs)


def test_every_patch_is_in_a_series():
    used = set()
    for series in _all_series():
        for line in series.read_text().splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                used.add((series.parent / name).resolve())
    unused = [p for p in _all_patch_files() if p.resolve() not in used]
    assert not unused, f"patches in no series: {unused}"


def _windows(lines, size=6):
    """Runs of ``size`` consecutive substantial lines (blank and one-token lines skipped)."""
    kept = [line.strip() for line in lines if len(line.strip()) > 12]
    return {"\n".join(kept[i : i + size]) for i in range(len(kept) - size + 1)}


def test_no_run_of_upstream_source_is_copied_outside_patches():
    """No six substantial lines of the release's Python sources appear in our own files."""
    import zipfile

    from conftest import base_wheel

    upstream = set()
    with zipfile.ZipFile(base_wheel("torch_tensorrt", "2.14.0")) as zf:
        for name in zf.namelist():
            if name.endswith(".py"):
                upstream |= _windows(
                    zf.read(name).decode("utf-8", "replace").splitlines()
                )
    ours = [
        p
        for p in ROOT.rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".md", ".toml", ".rst")
        and not {".git", "dist", "patches"} & set(p.relative_to(ROOT).parts)
    ]
    copied = {
        str(p.relative_to(ROOT)): len(_windows(p.read_text().splitlines()) & upstream)
        for p in ours
    }
    assert not {k: v for k, v in copied.items() if v}, copied


def test_no_upstream_source_outside_patches():
    """The repository holds only our files: no copy of the torch_tensorrt package anywhere."""
    ours = [
        p
        for p in ROOT.rglob("*")
        if p.is_file() and ".git" not in p.parts and "dist" not in p.parts
    ]
    copied = [p for p in ours if "torch_tensorrt" in p.relative_to(ROOT).parts]
    assert not copied, copied


@pytest.mark.parametrize("variant,version", SUPPORTED, ids=lambda v: str(v))
def test_keep_on_device_keyword_and_aligned_calls(patched_trees, variant, version):
    source = (patched_trees(variant, version) / MTTM).read_text()
    module = ast.parse(source)
    init, kwonly = _mttm_init(module)
    assert ast.unparse(kwonly["keep_on_device"]) == "()"
    assert "keep_on_device (Union[str, Iterable[str]])" in ast.get_docstring(init)
    assert _calls_route_modules_to_their_weights(module)


def _calls_route_modules_to_their_weights(module: ast.Module) -> bool:
    """Does the change-trigger wrapper's __call__ send module calls to _call_where_weights_live?"""
    calls = [
        f
        for c in ast.walk(module)
        if isinstance(c, ast.ClassDef) and c.name == "ChangeTriggerWrapper"
        for f in c.body
        if isinstance(f, ast.FunctionDef) and f.name == "__call__"
    ]
    assert len(calls) == 1, "no single ChangeTriggerWrapper.__call__"
    first = calls[0].body[0]
    return (
        isinstance(first, ast.If)
        and ast.unparse(first.test) == "isinstance(self.instance, torch.nn.Module)"
        and ast.unparse(first.body[0])
        == "return _call_where_weights_live(self.instance, path, *args, **kwargs)"
    )


def test_release_calls_modules_as_they_are():
    """The check above fails on the release, whose wrapper calls the module as it is."""
    import zipfile

    from conftest import base_wheel

    with zipfile.ZipFile(base_wheel("torch_tensorrt", "2.14.0")) as zf:
        source = zf.read(MTTM[len("py/") :]).decode()
    assert not _calls_route_modules_to_their_weights(ast.parse(source))
