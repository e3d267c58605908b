# type: ignore
"""Attacks on refits in place: every way of changing a weight that could leave a stale engine.

Each case builds a small model on the GPU, compiles it through MutableTorchTensorRTModule, changes
weights in one way a user can, checks that PyTorch's output really moved (cosine similarity to the
output before the change below MOVED, so that a stale engine cannot pass), then checks the module
against PyTorch (cosine >= 0.999 for fp32, 0.995 for bf16/fp16) and, where it can be predicted,
which refit ran ("in place", "full", ...). A crash of the call is an outcome, reported with the log.

"Twin" cases are models whose engines' weight name maps pair a tensor with an engine weight by
value (a tensor read twice by functional ops, two zero-initialised weights of one module) or fold
add's alpha into a constant: the module must take the full refit without the maps there.

"""

import copy
import logging
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import torch_tensorrt as torch_trt

from .test_mutable_fast_refit import (
    FULL,
    IN_PLACE,
    THRESHOLD,
    _call_after_change,
    _compile,
    _pytorch_output,
)

# _reset_dynamo: the autouse fixture that runs torch._dynamo.reset() after each case
from .test_mutable_offload import _reset_dynamo  # noqa: F401
from .test_mutable_offload import (
    DEVICE,
    MTTM_LOGGER,
    RUNTIMES,
    TinyLanguageModelWithIds,
    _input_ids,
    _make_model,
    requires_refit,
)

pytestmark = [pytest.mark.unit, requires_refit]
LOW_PRECISION_THRESHOLD = 0.995
MOVED = 0.99
H = 64
SEQ = 8
MTTM = torch_trt.MutableTorchTensorRTModule


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _seeded(cls, *args, seed=0, dtype=None, **kwargs):
    torch.manual_seed(seed)
    model = cls(*args, **kwargs).eval().to(DEVICE)
    return model.to(dtype) if dtype is not None else model


def _x(*shape, seed=1, dtype=torch.float32):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(*shape, device=DEVICE, generator=generator).to(dtype)


def _ids(vocab, shape=(2, SEQ), seed=1):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randint(0, vocab, shape, device=DEVICE, generator=generator)


def _reference(model, inputs):
    """PyTorch's output, from a copy of ``model`` on the GPU (the model itself may be offloaded)."""
    reference = copy.deepcopy(model).to(DEVICE)
    with torch.no_grad():
        return reference(*[i.to(DEVICE) for i in inputs]).float()


def _cos(a, b):
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def _perturb(t):
    """A large change of a float tensor: -2 t plus noise of its typical size (0.1 for all-zero tensors)."""
    scale = t.float().abs().mean().item() or 0.1
    if t.dim() == 1:  # a bias moves the output little: noise of at least 0.5
        scale = max(scale, 0.5)
    t.copy_(-2 * t + torch.randn_like(t) * scale)


def _path(log):
    if "refit failed" in log:
        return "refit failed, recompiled"
    if "Not refittable" in log or "(Re)Compiling" in log:
        return "recompiled"
    if IN_PLACE in log:
        return "in place"
    if FULL in log:
        return "full"
    if "Refitting the module" in log:
        return "full (no reason logged)"
    return "none (LIVE)"


@dataclass
class Outcome:
    expected: torch.Tensor
    similarity: Optional[float]
    error: Optional[str]
    path: str
    log: str = field(repr=False)

    def ok(self, threshold=THRESHOLD):
        return self.error is None and self.similarity >= threshold

    def describe(self):
        got = f"raised {self.error}" if self.error else f"cosine {self.similarity:.5f}"
        return f"{got}, refit: {self.path}"


def _after_change(mttm, model, inputs, before, caplog):
    """Check that the change moved PyTorch's output, then call the module; its outcome."""
    expected = _reference(model, inputs)
    moved = _cos(expected, before)
    assert (
        moved < MOVED
    ), f"the change must move PyTorch's output (cosine to before: {moved})"
    caplog.clear()
    similarity = error = None
    with caplog.at_level(logging.INFO, logger=MTTM_LOGGER), torch.no_grad():
        try:
            similarity = _cos(expected, mttm(*inputs))
        except Exception as e:  # a crash is an outcome
            error = f"{type(e).__name__}: {e}"
    return Outcome(expected, similarity, error, _path(caplog.text), caplog.text)


def _check(outcome, *, label="", threshold=THRESHOLD, path=None):
    assert outcome.ok(
        threshold
    ), f"{label}: {outcome.describe()} (needs >= {threshold})\n{outcome.log}"
    if path is not None:
        assert (
            outcome.path == path
        ), f"{label}: expected the {path} refit, got {outcome.path}\n{outcome.log}"


def _compile_checked(
    model, inputs, use_python_runtime, threshold=THRESHOLD, **settings
):
    """The compiled module, checked against PyTorch before any change, and PyTorch's output."""
    mttm = _compile(model, inputs, use_python_runtime, **settings)
    before = _reference(model, inputs)
    with torch.no_grad():
        similarity = _cos(before, mttm(*inputs))
    assert (
        similarity >= threshold
    ), f"the compiled module must match PyTorch before any change (cosine {similarity})"
    return mttm, before


def _twins(make_model, inputs, change, caplog, use_python_runtime=False, **settings):
    """The outcome of ``change`` with the refit in place allowed and with the full refit forced."""
    outcomes = {}
    # The release's full refit (weight name maps trusted) is wrong in several of these cases; only
    # the module's own choice is checked
    for path in ("in place",):
        model = make_model()
        mttm, before = _compile_checked(model, inputs, use_python_runtime, **settings)
        with torch.no_grad():
            change(model)
        outcomes[path] = _after_change(mttm, model, inputs, before, caplog)
    return outcomes


def _check_twins(outcomes, *, fast_path=None, threshold=THRESHOLD):
    summary = "; ".join(f"{p} allowed -> {o.describe()}" for p, o in outcomes.items())
    print(summary)
    assert all(o.ok(threshold) for o in outcomes.values()), (
        summary
        + "\n--- log of the call with the refit in place allowed:\n"
        + outcomes["in place"].log
    )
    if fast_path is not None:
        assert outcomes["in place"].path == fast_path, summary


def _steps(mttm, model, inputs, before, caplog, steps, threshold=THRESHOLD):
    """Change one tensor after the other (by name), calling the module after each; all failures at the end."""
    failures, lines = [], []
    for name, expected_path in steps:
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        with torch.no_grad():
            # A bias behind a ReLU may need more than one change to move the output
            for _ in range(4):
                _perturb(tensors[name])
                if _cos(_reference(model, inputs), before) < MOVED:
                    break
        outcome = _after_change(mttm, model, inputs, before, caplog)
        lines.append(
            f"{name}: {outcome.describe()} (predicted: {expected_path or 'either'})"
        )
        if not outcome.ok(threshold):
            failures.append(f"{name}: {outcome.describe()}\n{outcome.log}")
        elif expected_path is not None and outcome.path != expected_path:
            failures.append(
                f"{name}: expected the {expected_path} refit, got {outcome.path}\n{outcome.log}"
            )
        before = outcome.expected
    print("\n".join(lines))
    assert not failures, "\n".join(lines) + "\n\n" + "\n\n".join(failures)


class MLP(nn.Module):
    def __init__(self, width=H):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


# ----------------------------------------------------------------------------------------------
# 1. CUDA graphs: the refit in place resets the Python runtime's captured graph, not its state
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "use_python_runtime, force_full",
    [
        pytest.param(True, False, id="python-runtime-in-place"),
        pytest.param(True, True, id="python-runtime-full-refit"),
        pytest.param(False, False, id="cpp-runtime-in-place"),
    ],
)
def test_cuda_graphs_after_refit(use_python_runtime, force_full, caplog):
    """
    _refit_in_place calls module._reset_captured_graph() (cudagraph = None) but leaves
    runtime_states.context_changed False: the next call neither records nor resets and replays
    ``None.replay()`` (AttributeError), outside refit_gm's try/except.
    """
    model = _seeded(MLP)
    inputs = (_x(8, H),)
    torch_trt.runtime.set_cudagraphs_mode(True)
    try:
        mttm, before = _compile_checked(model, inputs, use_python_runtime)
        if force_full:
            mttm._refit_plan = ({}, {}, None)
        with torch.no_grad():
            _perturb(model.fc2.weight)
        outcome = _after_change(mttm, model, inputs, before, caplog)
        again = None
        if outcome.error is None:
            with torch.no_grad():
                again = _cos(outcome.expected, mttm(*inputs))
    finally:
        torch_trt.runtime.set_cudagraphs_mode(False)
    _check(outcome, path="full" if force_full else "in place")
    assert again >= THRESHOLD, f"the replay after the refit: cosine {again}"


# ----------------------------------------------------------------------------------------------
# 2-6. The engines' weight name map (stage 2 matches values within 0.01, and removes a match from
#      its search; stage 1 matches names and removes nothing): the refit in place trusts it
# ----------------------------------------------------------------------------------------------


class FunctionalTiedLM(nn.Module):
    """minGPT-style tied embedding written with functional calls: ``wte`` is read twice."""

    def __init__(self, vocab=512):
        super().__init__()
        self.wte = nn.Parameter(torch.randn(vocab, H) * 0.5)
        self.fc = nn.Linear(H, H)

    def forward(self, ids):
        h = torch.tanh(self.fc(F.embedding(ids, self.wte)))
        return F.linear(h, self.wte)


def test_tensor_read_twice_by_functional_ops(caplog):
    """
    Neither engine constant of ``wte`` has a stage-1 name (".weight" at the root): stage 2 maps the
    embedding's to ``wte`` and removes it from the search, the output projection's maps to "". The
    plan skips "" silently, so ``wte`` qualifies with one of its two engine weights: predicted
    in place and wrong (the full refit leaves the "" weight unchanged too).
    """
    outcomes = _twins(
        lambda: _seeded(FunctionalTiedLM),
        (_ids(512),),
        lambda m: _perturb(m.wte),
        caplog,
    )
    _check_twins(outcomes)


class ScaledNormHead(nn.Module):
    """A learnable output scale (1 at build) next to a functional layer_norm without affine."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(H, H)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.tanh(self.fc(F.layer_norm(x, (H,)))) * self.scale


def test_scalar_equal_to_a_converter_constant(caplog):
    """
    native_layer_norm without weight creates a scalar constant 1.0 ("native_layer_norm_weight");
    stage 2 maps it to ``scale`` (shape (), within 0.01), both at the root (module check passes),
    and the real ``x * scale`` constant gets "". Predicted: in place, sets the layer norm's
    constant to the new scale, wrong; full refit wrong too.
    """
    outcomes = _twins(
        lambda: _seeded(ScaledNormHead),
        (_x(4, SEQ, H),),
        lambda m: m.scale.fill_(-2.0),
        caplog,
    )
    _check_twins(outcomes)


class ZeroAdapterBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(
            torch.zeros(H, H)
        )  # read by F.linear: stage 1 names it
        self.w2 = nn.Parameter(
            torch.zeros(H, H)
        )  # read by x @ w2: stage 2, equal values

    def forward(self, x):
        return x + F.linear(x, self.weight) + torch.tanh(x @ self.w2)


class ZeroAdapters(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(H, H)
        self.blk = ZeroAdapterBlock()
        self.out = nn.Linear(H, H)

    def forward(self, x):
        return self.out(self.blk(self.inp(x)))


def test_zero_initialised_square_weights_of_one_module(caplog):
    """
    ``blk.weight`` (stage 1, kept in the search) and ``blk.w2`` are both zero at build: stage 2
    maps the matmul's constant to ``blk.weight`` too, same module. Changing ``blk.weight`` sets
    both engine weights: predicted in place and wrong (full refit wrong too).
    """
    outcomes = _twins(
        lambda: _seeded(ZeroAdapters),
        (_x(4, SEQ, H),),
        lambda m: m.blk.weight.copy_(torch.randn(H, H, device=DEVICE) * 0.2),
        caplog,
    )
    _check_twins(outcomes)


class AlphaAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(H, H)
        self.delta = nn.Parameter(
            torch.zeros(H)
        )  # zero at build, like a LoRA B or a ReZero gate
        self.out = nn.Linear(H, H)

    def forward(self, x):
        return self.out(torch.tanh(torch.add(self.fc(x), self.delta, alpha=2.0)))


def test_add_with_alpha(caplog):
    """
    aten.add.Tensor(x, delta, alpha=2): the converter folds alpha * delta into the engine constant,
    so the engine weight is 2 * delta, not delta "as it is". Zero at build, stage 2 maps it to
    ``delta``: predicted in place, setting delta instead of 2 * delta (full refit wrong too).
    """
    outcomes = _twins(
        lambda: _seeded(AlphaAdd),
        (_x(4, SEQ, H),),
        lambda m: m.delta.copy_(torch.randn(H, device=DEVICE)),
        caplog,
    )
    _check_twins(outcomes)


class ShiftedIds(nn.Module):
    def __init__(self, vocab=1000):
        super().__init__()
        self.embed = nn.Embedding(vocab, H)
        self.fc = nn.Linear(H, H)
        self.register_buffer("shift", torch.zeros(SEQ, dtype=torch.int64))

    def forward(self, ids):
        return self.fc(torch.tanh(self.embed(ids + self.shift)))


def test_int64_buffer_added_to_the_inputs(caplog):
    """
    An int64 buffer read by aten.add: an INT64 engine constant. If TensorRT does not refit it,
    set_named_weights returns False, which _set_engine_weight ignores: stale, no error.
    """
    outcomes = _twins(
        lambda: _seeded(ShiftedIds),
        (_ids(990),),
        lambda m: m.shift.copy_(torch.arange(SEQ, device=DEVICE) % 3 + 1),
        caplog,
    )
    _check_twins(outcomes)


# ----------------------------------------------------------------------------------------------
# 7-8. Every listed op, functional and module forms, one change after the other (later refits
#      after earlier ones, in place and full mixed)
# ----------------------------------------------------------------------------------------------


class FunctionalUses(nn.Module):
    def __init__(self):
        super().__init__()

        def p(*shape, scale=0.2):
            return nn.Parameter(torch.randn(*shape) * scale)

        self.w_linear = p(H, H)
        self.w_matmul = p(H, H)
        self.w_lhs = p(SEQ, SEQ, scale=0.4)
        self.w_mul = p(H, scale=1.0)
        self.w_add = p(H, scale=0.5)
        self.w_sub = p(H, scale=0.5)
        self.register_buffer("b_add", torch.randn(H) * 0.5)
        self.w_where = p(H, scale=0.5)
        self.w_twice = p(H, H)
        self.w_addmm = p(H, H)
        self.b_addmm = p(H, scale=0.5)
        self.w_baddbmm = p(2, H, H, scale=0.1)

    def forward(self, x):  # (2, SEQ, H)
        h = torch.tanh(F.linear(x, self.w_linear))
        h = torch.tanh(h @ self.w_matmul)
        h = torch.tanh(self.w_lhs @ h)
        h = h * self.w_mul + self.w_add
        h = torch.tanh(self.w_sub - h + self.b_add)
        h = torch.where(h > 0, h, self.w_where)
        h = torch.tanh(F.linear(h, self.w_twice) + h @ self.w_twice.t())
        h = torch.addmm(self.b_addmm, h.reshape(-1, H), self.w_addmm).reshape(h.shape)
        return torch.baddbmm(h, h, self.w_baddbmm)


FUNCTIONAL_STEPS = [
    # Parameters of the root module: their layers name no module, so the weight name maps
    # pair them with tensors by value and the refit is the full one, without the maps
    ("w_linear", "full"),
    ("w_matmul", "full"),
    ("w_lhs", "full"),  # w @ x: the constant is the left operand
    (
        "w_mul",
        None,
    ),  # elementwise: TensorRT may combine neighbours, either refit is right
    ("w_add", None),
    ("w_sub", None),  # w - x ordering
    ("b_add", None),  # a registered buffer read by aten.add
    ("w_where", "full"),
    ("w_twice", "full"),  # read by linear and through a transpose
    ("w_addmm", "full"),
    ("b_addmm", "full"),
    ("w_baddbmm", "full"),
]


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_functional_uses_one_after_the_other(use_python_runtime, caplog):
    model = _seeded(FunctionalUses)
    inputs = (_x(2, SEQ, H),)
    mttm, before = _compile_checked(model, inputs, use_python_runtime)
    _steps(mttm, model, inputs, before, caplog, FUNCTIONAL_STEPS)


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.deconv = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.conv1d = nn.Conv1d(8, 4, 3)

    def forward(self, x):  # (2, 3, 16, 16)
        h = torch.relu(self.conv(x))
        h = torch.relu(self.grouped(h))
        h = torch.relu(self.depthwise(h))
        h = self.deconv(h)  # (2, 8, 32, 32)
        return self.conv1d(h.flatten(2))


CONV_STEPS = [
    ("conv.weight", "in place"),
    ("conv.bias", None),
    ("grouped.weight", "in place"),
    ("depthwise.weight", "in place"),
    ("depthwise.bias", None),
    # the converter unsqueezes the kernel: its engine weight is named by no tensor, the maps are not
    # trusted and the full refit runs without them; that refit finds no value for the
    # deconvolution's bias, fails, and the module compiles again
    ("conv1d.weight", "refit failed, recompiled"),
    ("conv1d.bias", None),
    ("deconv.weight", "refit failed, recompiled"),
    ("deconv.bias", "refit failed, recompiled"),
]


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_convolutions_one_after_the_other(use_python_runtime, caplog):
    model = _seeded(Convs)
    inputs = (_x(2, 3, 16, 16),)
    mttm, before = _compile_checked(model, inputs, use_python_runtime)
    _steps(mttm, model, inputs, before, caplog, CONV_STEPS)


class Deconv(nn.Module):
    def __init__(self):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(16, 8, 2, stride=2)

    def forward(self, x):
        return self.deconv(x)


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_refit_without_weight_map_is_never_stale(use_python_runtime):
    """refit_module_weights without the maps either refits every engine weight or raises."""
    from torch_tensorrt.dynamo._refit import refit_module_weights

    model = _seeded(Deconv)
    inputs = (_x(2, 16, 8, 8),)
    trt_gm = torch_trt.dynamo.compile(
        torch.export.export(model, inputs),
        inputs,
        min_block_size=1,
        immutable_weights=False,
        use_python_runtime=use_python_runtime,
    )
    with torch.no_grad():
        before = trt_gm(*inputs).clone()
        assert _cos(before, model(*inputs)) >= THRESHOLD
        model.deconv.weight.mul_(-1.0)
        model.deconv.bias.add_(1.0)
        expected = model(*inputs)
    moved = _cos(expected, before)
    assert (
        moved < MOVED
    ), f"the change must move PyTorch's output (cosine to before: {moved})"
    try:
        refitted = refit_module_weights(
            trt_gm,
            torch.export.export(model, inputs),
            arg_inputs=inputs,
            use_weight_map_cache=False,
            in_place=False,
        )
    except AssertionError:
        return  # the caller knows the engine was not refitted
    with torch.no_grad():
        similarity = _cos(refitted(*inputs), expected)
    assert (
        similarity >= THRESHOLD
    ), f"refitted without raising, but stale: cosine {similarity}"


class GatedBlock(nn.Module):
    """A zero-initialised tanh gate (folded into a one-element constant) after an RMS norm's eps."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(H, H)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x + torch.tanh(self.gate) * torch.relu(self.fc(h))


class FoldedTwice(nn.Module):
    """One folded constant (a transposed weight) read by two matrix products."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(H, H) / H**0.5)

    def forward(self, x):
        wt = self.w.t()
        return torch.tanh(x @ wt) @ wt


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize(
    "make_model, steps",
    [
        pytest.param(GatedBlock, [("gate", None), ("fc.weight", None)], id="gate"),
        pytest.param(FoldedTwice, [("w", None)], id="folded-twice"),
    ],
)
def test_folded_constants_found_by_their_values(
    make_model, steps, use_python_runtime, caplog
):
    # The weight name maps pair a folded constant with an engine weight by its values, so the
    # refit runs without them
    model = _seeded(make_model)
    inputs = (_x(2, SEQ, H),)
    mttm, before = _compile_checked(model, inputs, use_python_runtime)
    _steps(mttm, model, inputs, before, caplog, steps)


# ----------------------------------------------------------------------------------------------
# 9-10. Tied weights; an optimizer step over every tensor (fused AdamW)
# ----------------------------------------------------------------------------------------------


class TiedLM(nn.Module):
    def __init__(self, vocab=512):
        super().__init__()
        self.embed = nn.Embedding(vocab, H)
        self.fc = nn.Linear(H, H)
        self.lm_head = nn.Linear(H, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.fc(self.embed(ids))))


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_tied_lm_head_changed_through_its_alias(use_python_runtime, caplog):
    """
    changed = (embed.weight, lm_head.weight), both mapped to the alias embed.weight. Predicted: the
    lm_head constant is mapped (stage 2) to embed.weight, another module: full refit, right.
    """
    model = _seeded(TiedLM)
    inputs = (_ids(512),)
    mttm, before = _compile_checked(model, inputs, use_python_runtime)
    with torch.no_grad():
        _perturb(mttm.lm_head.weight)
    assert model.embed.weight is model.lm_head.weight
    _check(_after_change(mttm, model, inputs, before, caplog))


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_fused_adamw_step_over_every_tensor(use_python_runtime, caplog):
    """Embedding, every LayerNorm (ones and zeros at build) and linear change at once."""
    model = _make_model(TinyLanguageModelWithIds)
    inputs = (_input_ids(),)
    mttm, before = _compile_checked(model, inputs, use_python_runtime)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2, fused=True)
    generator = torch.Generator(device=DEVICE).manual_seed(3)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, device=DEVICE, generator=generator)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _check(_after_change(mttm, model, inputs, before, caplog), path="in place")


# ----------------------------------------------------------------------------------------------
# 11-14. Offloading with a NumPy view, load_state_dict(assign=True), save/load, graph breaks
# ----------------------------------------------------------------------------------------------


def test_numpy_view_of_an_offloaded_weight_through_the_module(caplog):
    model = _seeded(MLP)
    inputs = (_x(8, H),)
    mttm, before = _compile_checked(
        model, inputs, False, offload_module_to_cpu=True, keep_on_device=("fc1",)
    )
    assert model.fc1.weight.is_cuda and model.fc2.weight.device.type == "cpu"
    with torch.no_grad():
        mttm.fc1.weight.data.copy_(-2 * mttm.fc1.weight.data)  # kept on the device
        view = mttm.fc2.weight.detach().numpy()  # offloaded: CPU memory
        view *= -1.5
    outcome = _after_change(mttm, model, inputs, before, caplog)
    _check(outcome, path="in place")
    assert model.fc1.weight.is_cuda and model.fc2.weight.device.type == "cpu"


def test_load_state_dict_assign_with_a_non_contiguous_tensor(caplog):
    model = _seeded(MLP)
    inputs = (_x(8, H),)
    mttm, before = _compile_checked(model, inputs, True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["fc2.weight"] = (-2 * state["fc2.weight"]).t().contiguous().t()
    assert not state["fc2.weight"].is_contiguous()
    old = model.fc2.weight
    mttm.load_state_dict(state, assign=True)
    assert model.fc2.weight is not old and not model.fc2.weight.is_contiguous()
    _check(_after_change(mttm, model, inputs, before, caplog), path="in place")


def test_change_after_save_and_load(caplog, tmp_path):
    model = _seeded(MLP)
    inputs = (_x(8, H),)
    mttm, before = _compile_checked(model, inputs, False)
    with torch.no_grad():
        _perturb(model.fc1.weight)
    first = _after_change(mttm, model, inputs, before, caplog)
    _check(first, label="before save", path="in place")
    path = str(tmp_path / "mttm.pkl")
    MTTM.save(mttm, path)
    loaded = MTTM.load(path)
    with torch.no_grad():
        similarity = _cos(first.expected, loaded(*inputs))
    assert similarity >= THRESHOLD, f"the loaded engines: cosine {similarity}"
    with torch.no_grad():
        _perturb(loaded.fc2.weight)
    second = _after_change(
        loaded, loaded.original_model, inputs, first.expected, caplog
    )
    _check(second, label="after load", path="in place")
    with torch.no_grad():
        _perturb(loaded.fc3.bias)
    third = _after_change(
        loaded, loaded.original_model, inputs, second.expected, caplog
    )
    _check(third, label="second change after load")


class TwoEngines(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(H, H)
        self.fc2 = nn.Linear(H, H)
        self.s = nn.Parameter(torch.randn(H) * 0.5)  # read by both engines
        self.g = nn.Parameter(
            torch.randn(H) * 0.5 + 1.0
        )  # read by PyTorch (aten.mul runs there)

    def forward(self, x):
        h = torch.tanh(self.fc1(x) + self.s)
        h = h * self.g
        return self.fc2(h) + self.s


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_graph_break_shared_weight_and_replaced_parameters(use_python_runtime, caplog):
    model = _seeded(TwoEngines)
    inputs = (_x(4, SEQ, H),)
    mttm, before = _compile_checked(
        model,
        inputs,
        use_python_runtime,
        torch_executed_ops={torch.ops.aten.mul.Tensor},
    )
    engines = [n for n, _ in mttm.gm.named_children() if "_run_on_acc" in n]
    assert (
        len(engines) == 2
    ), f"expected two engines, got {list(mttm.gm.named_children())}"
    steps = [
        # s is a parameter of the root module, named by value in the maps: the full refit
        ("s in place", lambda: _perturb(model.s), "full"),
        (
            "g replaced",
            lambda: setattr(mttm, "g", nn.Parameter(model.g * -2.0)),
            "full",
        ),
        (
            "s replaced",
            lambda: setattr(mttm, "s", nn.Parameter(model.s * -2.0)),
            "full",
        ),
        ("g in place", lambda: mttm.g.mul_(-1.5), "full"),
    ]
    lines, failures = [], []
    for label, change, predicted in steps:
        with torch.no_grad():
            change()
        outcome = _after_change(mttm, model, inputs, before, caplog)
        lines.append(f"{label}: {outcome.describe()} (predicted {predicted})")
        if not outcome.ok() or outcome.path != predicted:
            failures.append(f"{label}: {outcome.describe()}\n{outcome.log}")
        before = outcome.expected
    print("\n".join(lines))
    assert not failures, "\n".join(lines) + "\n\n" + "\n\n".join(failures)


# ----------------------------------------------------------------------------------------------
# 15-18. Dtypes: bf16 weights, weak typing with fp16 kernels, autocast
# ----------------------------------------------------------------------------------------------


def test_bf16_weights(caplog):
    model = _seeded(MLP, dtype=torch.bfloat16)
    inputs = (_x(8, H, dtype=torch.bfloat16),)
    mttm, before = _compile_checked(
        model, inputs, True, threshold=LOW_PRECISION_THRESHOLD
    )
    with torch.no_grad():
        _perturb(model.fc2.weight)
    outcome = _after_change(mttm, model, inputs, before, caplog)
    _check(outcome, threshold=LOW_PRECISION_THRESHOLD, path="in place")


def test_fp32_weights_with_fp16_kernels(caplog):
    """enabled_precisions={fp16} needs use_explicit_typing=False in 2.11 (weak typing)."""
    model = _seeded(MLP)
    inputs = (_x(8, H),)
    mttm, before = _compile_checked(
        model,
        inputs,
        False,
        threshold=LOW_PRECISION_THRESHOLD,
        use_explicit_typing=False,
        enabled_precisions={torch.float16},
    )
    with torch.no_grad():
        _perturb(model.fc1.weight)
    outcome = _after_change(mttm, model, inputs, before, caplog)
    _check(outcome, threshold=LOW_PRECISION_THRESHOLD, path="in place")


def test_autocast_fp16(caplog):
    """
    rule_based_autocast inserts aten.to.dtype on the weights in MTTM's own exported program
    (pre_export_lowering mutates it): predicted full refit ("folded into a constant by to"), right.
    """
    model = _seeded(MLP)
    inputs = (_x(8, H),)
    mttm, before = _compile_checked(
        model,
        inputs,
        False,
        threshold=LOW_PRECISION_THRESHOLD,
        enable_autocast=True,
        autocast_low_precision_type=torch.float16,
    )
    with torch.no_grad():
        _perturb(model.fc2.weight)
    outcome = _after_change(mttm, model, inputs, before, caplog)
    _check(outcome, threshold=LOW_PRECISION_THRESHOLD)


# ----------------------------------------------------------------------------------------------
# 19-21. Dynamic shapes, a change while a call still runs on another stream, LoRA zeros and
#        LayerNorm ones
# ----------------------------------------------------------------------------------------------


def test_dynamic_batch(caplog):
    model = _seeded(MLP)
    mttm = MTTM(model, min_block_size=1, use_python_runtime=False)
    batch = torch.export.Dim("batch", min=1, max=16)
    mttm.set_expected_dynamic_shape_range(({0: batch},), {})
    with torch.no_grad():
        mttm(_x(4, H))
        mttm(_x(7, H, seed=2))
    inputs = (_x(5, H, seed=3),)
    before = _reference(model, inputs)
    with torch.no_grad():
        _perturb(model.fc1.weight)
    _check(_after_change(mttm, model, inputs, before, caplog), path="in place")


def test_change_while_a_call_runs_on_another_stream(caplog):
    model = _seeded(MLP, width=1024)
    inputs = (_x(4096, 1024),)
    mttm, before = _compile_checked(model, inputs, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            first = mttm(*inputs)
    with torch.no_grad():  # default stream, not ordered after the side stream
        _perturb(model.fc1.weight)
    outcome = _after_change(mttm, model, inputs, before, caplog)
    torch.cuda.synchronize()
    similarity = _cos(first, before)
    assert (
        similarity >= THRESHOLD
    ), f"the call made before the change: cosine {similarity}"
    _check(outcome, path="in place")


class LoRABlock(nn.Module):
    def __init__(self, rank=4):
        super().__init__()
        self.norm = nn.LayerNorm(H)
        self.base = nn.Linear(H, H)
        self.lora_A = nn.Linear(H, rank, bias=False)
        self.lora_B = nn.Linear(rank, H, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        h = self.norm(x)
        return x + torch.tanh(self.base(h) + self.lora_B(self.lora_A(h)) * 2.0)


class LoRAStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(LoRABlock() for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_lora_b_zeros_and_layer_norm_ones(caplog):
    """Three zero lora_B of one shape and three LayerNorms of ones at build: stage 1 names each."""
    model = _seeded(LoRAStack)
    inputs = (_x(2, SEQ, H),)
    mttm, _ = _compile_checked(model, inputs, False)
    before = _pytorch_output(model, inputs)
    with torch.no_grad():
        model.blocks[1].lora_B.weight.copy_(torch.randn(H, 4, device=DEVICE))
    _, log = _call_after_change(mttm, model, inputs, before, caplog)
    assert IN_PLACE in log and FULL not in log, log
    before = _pytorch_output(model, inputs)
    with torch.no_grad():
        model.blocks[2].norm.weight.copy_(torch.randn(H, device=DEVICE))
    _, log = _call_after_change(mttm, model, inputs, before, caplog)
    assert IN_PLACE in log and FULL not in log, log
