# type: ignore
"""Refits in place: MutableTorchTensorRTModule sets only the changed engine weights.

After each way of changing a weight (each case first checks that the change moves PyTorch's
output), the call must refit the engines in place, without a new export, and match PyTorch
(cosine similarity >= 0.999, fp32); the log says which refit ran. Tensors that the engines do not
read as they are (folded into a constant, combined by a converter) take the full refit, with a
log line that names them. On the same weights, both refits give bitwise-equal outputs.
"""

import copy
import logging
import os
import tempfile

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import torch_tensorrt as torch_trt
from torch_tensorrt.dynamo.utils import cosine_similarity

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
IN_PLACE = "engine weights in place"
FULL = "Refitting with a new export"
THRESHOLD = 0.999


def _compile(model, inputs, use_python_runtime, **settings):
    mttm = torch_trt.MutableTorchTensorRTModule(
        model, min_block_size=1, use_python_runtime=use_python_runtime, **settings
    )
    with torch.no_grad():
        mttm(*inputs)
    return mttm


def _call_after_change(mttm, model, inputs, before, caplog):
    """The PyTorch output after the change (checked to differ from ``before``) and the module's, with its log."""
    model_device = next(model.parameters()).device
    with torch.no_grad():
        expected = model(*[i.to(model_device) for i in inputs]).to(DEVICE)
    assert not torch.allclose(
        expected, before, atol=1e-4
    ), "the change must move PyTorch's output"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=MTTM_LOGGER), torch.no_grad():
        actual = mttm(*inputs)
    similarity = cosine_similarity(expected, actual)
    assert similarity >= THRESHOLD, f"cosine similarity {similarity} < {THRESHOLD}"
    return actual, caplog.text


def _pytorch_output(model, inputs):
    with torch.no_grad():
        return model(*inputs).clone()


def _change_in_place(model):
    with torch.no_grad():
        dict(model.named_parameters())["layers.0.fc1.weight"].mul_(1.5)


def _change_data(mttm):
    fc2 = mttm.layers[1].fc2
    fc2.weight.data = torch.randn_like(fc2.weight) * 0.05


def _change_load_state_dict(model):
    sd = model.state_dict()
    sd["layers.1.qkv.weight"] = sd["layers.1.qkv.weight"] * -1.0
    model.load_state_dict(sd)


def _change_optimizer_step(model):
    optimizer = torch.optim.SGD(model.layers[0].proj.parameters(), lr=10.0)
    model.layers[0].proj.weight.grad = torch.randn_like(model.layers[0].proj.weight)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _change_lora(model):
    """A rank-16 delta fused into 8 linear weights, as LoRA adapters are switched."""
    generator = torch.Generator(device=DEVICE).manual_seed(1)
    with torch.no_grad():
        for block in model.layers:
            for linear in (block.qkv, block.proj, block.fc1, block.fc2):
                out_features, in_features = linear.weight.shape
                a = torch.randn(16, in_features, device=DEVICE, generator=generator)
                b = torch.randn(out_features, 16, device=DEVICE, generator=generator)
                linear.weight.add_(b @ a * 0.01)


def _change_embedding(mttm):
    with torch.no_grad():
        weight = mttm.get_input_embeddings().weight
        # Noise, not a constant shift: the LayerNorms would cancel a constant added to every row
        weight.add_(torch.randn_like(weight) * 0.5)


CHANGES = [
    pytest.param(_change_in_place, id="in-place-named-parameters"),
    pytest.param(_change_data, id="data-assignment"),
    pytest.param(_change_load_state_dict, id="load-state-dict"),
    pytest.param(_change_optimizer_step, id="optimizer-step"),
    pytest.param(_change_lora, id="lora-delta"),
    pytest.param(_change_embedding, id="embedding-rows"),
]


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize("change", CHANGES)
def test_weight_change_refits_in_place(change, use_python_runtime, caplog):
    model = _make_model(TinyLanguageModelWithIds)
    inputs = (_input_ids(),)
    mttm = _compile(model, inputs, use_python_runtime)
    before = _pytorch_output(model, inputs)
    change(mttm if change in (_change_data, _change_embedding) else model)
    _, log = _call_after_change(mttm, model, inputs, before, caplog)
    assert IN_PLACE in log and FULL not in log, log


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_refit_in_place_with_offloading_keeps_model_on_cpu(use_python_runtime, caplog):
    model = _make_model(TinyLanguageModelWithIds)
    inputs = (_input_ids(),)
    mttm = _compile(model, inputs, use_python_runtime, offload_module_to_cpu=True)
    assert all(p.device.type == "cpu" for p in model.parameters())
    before = _pytorch_output(model, [i.cpu() for i in inputs]).to(DEVICE)
    with torch.no_grad():
        model.layers[0].fc1.weight.mul_(1.5)
    _, log = _call_after_change(mttm, model, inputs, before, caplog)
    assert IN_PLACE in log and FULL not in log, log
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_refit_in_place_matches_full_refit_bitwise(use_python_runtime, caplog):
    model = _make_model(TinyLanguageModelWithIds)
    twin = copy.deepcopy(model)
    inputs = (_input_ids(),)
    fast = _compile(model, inputs, use_python_runtime)
    full = _compile(twin, inputs, use_python_runtime)
    # No engine weight is refitted in place: every change takes the full refit
    full._refit_plan = ({}, {}, None)
    before = _pytorch_output(model, inputs)
    _change_lora(model)
    _change_lora(twin)
    fast_output, log = _call_after_change(fast, model, inputs, before, caplog)
    assert IN_PLACE in log, log
    full_output, log = _call_after_change(full, twin, inputs, before, caplog)
    assert FULL in log and IN_PLACE not in log, log
    assert torch.equal(fast_output, full_output)


class TransposedWeight(nn.Module):
    """``x @ w.t()``: the transpose of ``w`` is folded into an engine constant."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 64)
        self.w = nn.Parameter(torch.randn(64, 64) * 0.1)

    def forward(self, x):
        return self.linear(x) @ self.w.t()


class ConvBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


DERIVED = [
    pytest.param(
        TransposedWeight, (4, 64), "w", "is folded into a constant", id="folded"
    ),
    pytest.param(
        ConvBatchNorm, (2, 3, 16, 16), "bn.weight", "bn.weight", id="batch-norm"
    ),
]


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize("cls, shape, name, why", DERIVED)
def test_derived_engine_weights_take_the_full_refit(
    cls, shape, name, why, use_python_runtime, caplog
):
    torch.manual_seed(0)
    model = cls().eval().to(DEVICE)
    inputs = (torch.randn(*shape, device=DEVICE),)
    mttm = _compile(model, inputs, use_python_runtime)
    before = _pytorch_output(model, inputs)
    with torch.no_grad():
        model.get_parameter(name).mul_(-2.0)
    _, log = _call_after_change(mttm, model, inputs, before, caplog)
    assert FULL in log and why in log and IN_PLACE not in log, log


def test_save_and_load_after_refit_in_place_keep_the_new_weights(caplog):
    model = _make_model(TinyLanguageModelWithIds)
    inputs = (_input_ids(),)
    mttm = _compile(model, inputs, use_python_runtime=False)
    before = _pytorch_output(model, inputs)
    _change_lora(model)
    _, log = _call_after_change(mttm, model, inputs, before, caplog)
    assert IN_PLACE in log, log
    expected = _pytorch_output(model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mttm.pkl")
        torch_trt.MutableTorchTensorRTModule.save(mttm, path)
        loaded = torch_trt.MutableTorchTensorRTModule.load(path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=MTTM_LOGGER), torch.no_grad():
        actual = loaded(*inputs)
    assert (
        "Refitt" not in caplog.text
    ), "the loaded engines already hold the new weights"
    assert cosine_similarity(expected, actual) >= THRESHOLD


def test_python_runtime_serializes_refitted_engine_when_read(caplog):
    model = _make_model(TinyLanguageModelWithIds)
    inputs = (_input_ids(),)
    mttm = _compile(model, inputs, use_python_runtime=True)
    engines = [m for m in mttm.gm.modules() if hasattr(m, "mark_engine_refitted")]
    assert engines
    serialized = [bytes(m.serialized_engine) for m in engines]
    before = _pytorch_output(model, inputs)
    _change_lora(model)
    actual, log = _call_after_change(mttm, model, inputs, before, caplog)
    assert IN_PLACE in log, log
    assert [bytes(m.serialized_engine) for m in engines] != serialized
    # A copy made from the serialized engines runs the new weights
    copied = copy.deepcopy(mttm.gm)
    with torch.no_grad():
        assert torch.equal(copied(*inputs), actual)
