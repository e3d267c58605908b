"""Every device the patches move tensors to comes from the module's settings or the tensors.

A model on cuda:1 must stay there while the current device is cuda:0: code added by the series
must not name a bare "cuda" device, call ``.cuda()``, or look up the current CUDA device where
the module's own device (``self.trt_device``) or the inputs' device is meant. This reads the
lines each supported release's series adds (the patched file against the release's) and checks
their calls.
"""

import ast
import difflib
import zipfile

import pytest
from conftest import VERSIONS, base_wheel, bpw

# Calls that act on the current CUDA device when given no device
CURRENT_DEVICE_CALLS = {
    "torch.cuda.current_device",
    "torch.cuda.set_device",
    "torch.cuda.synchronize",
    "torch.cuda.mem_get_info",
    "torch.cuda.memory_allocated",
    "torch.cuda.current_stream",
    "Device._current_device",
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _is_cuda_literal(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("cuda")
    )


# TensorRT and Triton work on the current CUDA device: on added lines, only inside
# ``with torch.cuda.device(...)``
NEEDS_DEVICE_CONTEXT = ("deserialize_cuda_engine", "Refitter", "refit_cuda_engine")


def device_problems(source: str, lines: set) -> list:
    """``(line, what)`` for each call on one of ``lines`` that picks a device by itself."""
    problems = []
    module = ast.parse(source)
    in_context = set()
    for node in ast.walk(module):
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call)
            and _dotted(item.context_expr.func) == "torch.cuda.device"
            for item in node.items
        ):
            in_context.update(range(node.lineno, node.end_lineno + 1))
    for node in ast.walk(module):
        if not isinstance(node, ast.Call) or node.lineno not in lines:
            continue
        name = _dotted(node.func)
        outside = node.lineno not in in_context
        if outside and isinstance(node.func, ast.Subscript):
            problems.append(
                (node.lineno, "a Triton kernel launched on the current device")
            )
            continue
        if outside and name.rpartition(".")[2] in NEEDS_DEVICE_CONTEXT:
            problems.append((node.lineno, f"{name}() runs on the current device"))
            continue
        args = list(node.args) + [k.value for k in node.keywords]
        if name.endswith(".cuda") and not node.args:
            problems.append((node.lineno, f"{name}() moves to the current CUDA device"))
        elif any(_is_cuda_literal(a) for a in args):
            problems.append((node.lineno, f"{name}() is given a bare CUDA device"))
        elif name in CURRENT_DEVICE_CALLS and not node.args and not node.keywords:
            problems.append((node.lineno, f"{name}() acts on the current CUDA device"))
    return problems


def _added_lines(before: str, after: str) -> set:
    added = set()
    matcher = difflib.SequenceMatcher(
        a=before.splitlines(), b=after.splitlines(), autojunk=False
    )
    for tag, _, _, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "insert"):
            added.update(range(j1 + 1, j2 + 1))
    return added


def test_the_check_finds_each_kind_of_problem():
    source = "\n".join(
        [
            "x.cuda()",
            "x.to('cuda')",
            "x.to(device='cuda:0')",
            "torch.cuda.synchronize()",
            "torch.cuda.current_device()",
            "x.to(self.device)",
            "torch.cuda.synchronize(device)",
            "x.to('cpu')",
            "runtime.deserialize_cuda_engine(data)",
            "kernel[(4,)](x)",
            "with torch.cuda.device(d):",
            "    trt.Refitter(engine, logger)",
            "    kernel[(4,)](x)",
        ]
    )
    found = [line for line, _ in device_problems(source, set(range(1, 14)))]
    assert found == [1, 2, 3, 4, 5, 9, 10]
    # Lines the patches did not add are not read
    assert device_problems(source, {6, 7, 8}) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_patched_code_uses_the_module_device(patched_trees, version):
    tree = patched_trees("torch_tensorrt", version)
    _, patches = bpw.series_for(version)
    touched = sorted(
        {path for patch in patches for path in patch.files() if path.endswith(".py")}
    )
    assert touched
    problems = []
    with zipfile.ZipFile(base_wheel("torch_tensorrt", version)) as zf:
        for path in touched:
            name = path[len(bpw.UPSTREAM_PACKAGE_PREFIX) :]
            before = zf.read(name).decode() if name in zf.namelist() else ""
            after = (tree / path).read_text()
            lines = _added_lines(before, after)
            problems += [
                f"{path}:{line}: {what}" for line, what in device_problems(after, lines)
            ]
    assert not problems, "\n".join(problems)
