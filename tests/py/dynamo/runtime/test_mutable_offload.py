# type: ignore
"""MutableTorchTensorRTModule must not move the user's model off its device unless asked.

Regression tests for pytorch/TensorRT#3728. The model is a small decoder-style language model
whose parameters are dominated by its embedding table, used the way GR00T's Eagle VLM uses its
language model: ``get_input_embeddings()(input_ids)`` with CUDA ids outside the compiled forward,
then the compiled module on ``inputs_embeds``. After every lifecycle step of the mutable module
(first compile, refit, attribute assignment, ``load_state_dict``, recompile, save/load) the user's
parameters must still be on CUDA, the embedding lookup must work and the outputs must match
PyTorch's. With ``offload_module_to_cpu=True`` the model must really leave the GPU and the module
must keep working.
"""

import contextlib
import copy
import gc
import itertools
import logging
import os
import tempfile

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import torch_tensorrt as torch_trt
from torch_tensorrt.dynamo.utils import COSINE_THRESHOLD, cosine_similarity

DEVICE = torch.device("cuda:0")
VOCAB, HIDDEN, HEADS, BLOCKS, SEQ, BATCH = 32000, 512, 8, 2, 16, 2
MTTM_LOGGER = "torch_tensorrt.dynamo.runtime._MutableTorchTensorRTModule"

requires_refit = pytest.mark.skipif(
    not torch_trt.ENABLED_FEATURES.refit, reason="Refit is not supported here"
)
pytestmark = [pytest.mark.unit, requires_refit]


class DecoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, 4 * hidden)
        self.fc2 = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = [
            t.reshape(b, s, self.heads, h // self.heads).transpose(1, 2)
            for t in (q, k, v)
        ]
        attn = torch.softmax(q @ k.transpose(-2, -1) / (h // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, s, h))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyLanguageModel(nn.Module):
    """Decoder-only LM whose weights are mostly its embedding table; forward takes inputs_embeds."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(DecoderBlock(HIDDEN, HEADS) for _ in range(BLOCKS))
        self.norm = nn.LayerNorm(HIDDEN)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class TinyLanguageModelWithIds(TinyLanguageModel):
    """The same model with the embedding lookup inside the compiled forward."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(self.embed_tokens(input_ids))


def _make_model(cls=TinyLanguageModel, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval().to(DEVICE)


def _input_ids(seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, seq), device=DEVICE)


def _weight_bytes(model: nn.Module) -> int:
    return sum(
        t.numel() * t.element_size()
        for t in itertools.chain(model.parameters(), model.buffers())
    )


def _devices(model: nn.Module) -> dict:
    return {
        name: t.device
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
    }


def _assert_all_on_cuda(model: nn.Module, step: str) -> None:
    off = {n: str(d) for n, d in _devices(model).items() if d.type != "cuda"}
    assert not off, f"after {step}, parameters left CUDA: {sorted(off.items())[:5]}"


def _assert_all_on_cpu(model: nn.Module, step: str, except_names=()) -> None:
    on = {
        n: str(d)
        for n, d in _devices(model).items()
        if d.type != "cpu" and n not in except_names
    }
    assert (
        not on
    ), f"after {step}, parameters still on the GPU: {sorted(on.items())[:5]}"


@contextlib.contextmanager
def _mttm_warnings():
    """The records of warnings that MutableTorchTensorRTModule logs inside the block."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger(MTTM_LOGGER)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _assert_close(reference: torch.Tensor, actual: torch.Tensor, step: str) -> None:
    similarity = cosine_similarity(reference, actual)
    assert (
        similarity > COSINE_THRESHOLD
    ), f"after {step}, cosine similarity {similarity} <= {COSINE_THRESHOLD}"


def _check_gr00t_pattern(mttm, model: nn.Module, step: str) -> None:
    """Embedding lookup with CUDA ids outside the compiled forward, then the compiled forward."""
    _assert_all_on_cuda(model, step)
    input_ids = _input_ids()
    with torch.no_grad():
        inputs_embeds = mttm.get_input_embeddings()(input_ids)
        assert inputs_embeds.device.type == "cuda"
        expected_embeds = model.embed_tokens.weight[input_ids]
        assert torch.equal(
            inputs_embeds, expected_embeds
        ), f"after {step}: embedding lookup differs"
        _assert_close(model(inputs_embeds), mttm(inputs_embeds), step)
    _assert_all_on_cuda(model, f"{step} (and one more forward)")


def _used_device_memory() -> int:
    """Device memory in use: what ``mem_get_info`` reports used, less the caching allocator's slack.

    Freed weights of 1-10 MiB live in 20 MiB allocator segments that ``empty_cache`` can only
    return once the whole segment is free; those bytes are reserved by PyTorch but in use by
    nobody, so they are not counted.
    """
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    slack = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return total - free - slack


@pytest.fixture(autouse=True)
def _reset_dynamo():
    yield
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


# offload_module_to_cpu not given, and explicitly False
OFFLOAD_OFF = [
    pytest.param({}, id="offload-default"),
    pytest.param({"offload_module_to_cpu": False}, id="offload-false"),
]
RUNTIMES = [
    pytest.param(False, id="cpp-runtime"),
    pytest.param(True, id="python-runtime"),
]


def _compile(model: nn.Module, use_python_runtime: bool, **settings):
    mttm = torch_trt.MutableTorchTensorRTModule(
        model, min_block_size=1, use_python_runtime=use_python_runtime, **settings
    )
    with torch.no_grad():
        mttm(model.embed_tokens(_input_ids()))
    if not settings.get("offload_module_to_cpu", False):
        _check_gr00t_pattern(mttm, model, "the first compilation")
    return mttm


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize("settings", OFFLOAD_OFF)
def test_refit_after_load_state_dict_keeps_model_on_device(
    settings, use_python_runtime
):
    model = _make_model()
    mttm = _compile(model, use_python_runtime, **settings)
    new_state = {k: v.clone() for k, v in _make_model(seed=1).state_dict().items()}
    mttm.load_state_dict(new_state)
    _check_gr00t_pattern(mttm, model, "load_state_dict and the refit")
    assert torch.equal(model.embed_tokens.weight, new_state["embed_tokens.weight"])
    assert mttm.offload_module_to_cpu is False


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize("settings", OFFLOAD_OFF)
def test_refit_after_weight_change_keeps_model_on_device(settings, use_python_runtime):
    model = _make_model()
    mttm = _compile(model, use_python_runtime, **settings)
    with torch.no_grad():
        # Through the wrapper: the weight access marks the module for the refit check
        mttm.layers[0].fc1.weight.mul_(1.5)
    _check_gr00t_pattern(mttm, model, "a weight change and the refit")


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize("settings", OFFLOAD_OFF)
def test_attribute_assignment_keeps_model_on_device(settings, use_python_runtime):
    model = _make_model()
    mttm = _compile(model, use_python_runtime, **settings)
    mttm.generation_mode = (
        "greedy"  # any attribute assignment runs the refit-condition check
    )
    assert model.generation_mode == "greedy"
    _check_gr00t_pattern(mttm, model, "an attribute assignment")


@pytest.mark.parametrize("settings", OFFLOAD_OFF)
def test_recompile_on_new_shape_keeps_model_on_device(settings):
    model = _make_model()
    mttm = _compile(model, False, **settings)
    with torch.no_grad():
        longer = mttm.get_input_embeddings()(_input_ids(seq=2 * SEQ))
        _assert_close(model(longer), mttm(longer), "a recompilation for a new shape")
    _assert_all_on_cuda(model, "a recompilation for a new shape")


@pytest.mark.parametrize("settings", OFFLOAD_OFF)
def test_forward_with_input_ids_keeps_model_on_device(settings):
    model = _make_model(TinyLanguageModelWithIds)
    mttm = torch_trt.MutableTorchTensorRTModule(model, min_block_size=1, **settings)
    input_ids = _input_ids()
    with torch.no_grad():
        _assert_close(model(input_ids), mttm(input_ids), "the first compilation")
        mttm.load_state_dict(_make_model(TinyLanguageModelWithIds, seed=1).state_dict())
        _assert_close(
            model(input_ids), mttm(input_ids), "load_state_dict and the refit"
        )
        _assert_all_on_cuda(model, "load_state_dict and the refit")
        embeds = mttm.get_input_embeddings()(input_ids)
        assert torch.equal(embeds, model.embed_tokens.weight[input_ids])


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize("settings", OFFLOAD_OFF)
def test_save_and_load_keeps_model_on_device(settings, use_python_runtime):
    if use_python_runtime:
        pytest.skip("The Python runtime cannot serialize a MutableTorchTensorRTModule")
    model = _make_model()
    mttm = _compile(model, use_python_runtime, **settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mutable.pkl")
        torch_trt.MutableTorchTensorRTModule.save(mttm, path)
        loaded = torch_trt.MutableTorchTensorRTModule.load(path)
    _check_gr00t_pattern(loaded, loaded.original_model, "save and load")
    # The module that was saved is untouched by saving
    _check_gr00t_pattern(mttm, model, "save")
    assert loaded.offload_module_to_cpu is False


def test_module_saved_without_the_setting_loads_with_the_default():
    """A module saved by a release without the keyword loads with offloading off."""
    model = _make_model()
    mttm = _compile(model, False)
    mttm.__dict__.pop("offload_module_to_cpu")  # as pickled before the setting existed
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mutable.pkl")
        torch_trt.MutableTorchTensorRTModule.save(mttm, path)
        loaded = torch_trt.MutableTorchTensorRTModule.load(path)
    assert loaded.offload_module_to_cpu is False
    _check_gr00t_pattern(
        loaded, loaded.original_model, "loading a module saved without the setting"
    )


def test_to_does_not_warn_about_offloading_when_offloading_is_off():
    model = _make_model()
    mttm = _compile(model, False)
    with _mttm_warnings() as records:
        mttm.to("cpu")
    assert records, "to() should still say that it does not move the module"
    assert not any("offloading" in r.getMessage().lower() for r in records)
    _assert_all_on_cuda(model, "MutableTorchTensorRTModule.to('cpu')")


def test_deallocate_module_is_a_noop_without_cuda_tensors(monkeypatch):
    from torch_tensorrt.dynamo import utils

    calls = []
    monkeypatch.setattr(
        utils.torch.cuda, "empty_cache", lambda: calls.append("empty_cache")
    )
    monkeypatch.setattr(utils.gc, "collect", lambda *a: calls.append("gc") or 0)
    cpu_module = nn.Linear(4, 4)
    utils.deallocate_module(cpu_module)
    assert (
        calls == []
    ), "deallocate_module emptied the cache or collected for a CPU module"
    cuda_module = nn.Linear(4, 4).to(DEVICE)
    utils.deallocate_module(cuda_module)
    assert cuda_module.weight.device.type == "cpu"
    assert "empty_cache" in calls


# ------------------------------------------------------------------------------------------
# offload_module_to_cpu=True: the model leaves the GPU and the module keeps working


def test_offload_frees_the_model_weights_on_the_device():
    weight_bytes = _weight_bytes(_make_model().cpu())
    # Warm up: the first engines of a process load kernels and runtime caches that stay resident
    for offload in (False, True):
        warm = _compile(_make_model(), False, offload_module_to_cpu=offload)
        del warm

    base = _used_device_memory()
    model = _make_model()
    kept = _compile(model, False, offload_module_to_cpu=False)
    used_kept = _used_device_memory() - base
    del kept, model
    base = _used_device_memory()
    model = _make_model()
    offloaded = _compile(model, False, offload_module_to_cpu=True)
    used_offloaded = _used_device_memory() - base

    _assert_all_on_cpu(model, "compilation with offload_module_to_cpu=True")
    saved = used_kept - used_offloaded
    print(
        f"[memory] weights {weight_bytes / 2**20:.1f} MiB; device memory in use after compile: "
        f"offload off {used_kept / 2**20:.1f} MiB, on {used_offloaded / 2**20:.1f} MiB, "
        f"saved {saved / 2**20:.1f} MiB"
    )
    assert saved >= 0.9 * weight_bytes, (
        f"offloading saved {saved / 2**20:.1f} MiB of device memory; the model's weights are "
        f"{weight_bytes / 2**20:.1f} MiB"
    )

    # Refit: the model stays offloaded and the exported program keeps no device copy of the
    # weights (released Torch-TensorRT left its whole state dict on the device). The device memory
    # in use after the refit is printed, not asserted: part of it is held outside this module.
    allocated_after_compile = torch.cuda.memory_allocated()
    offloaded.load_state_dict(_make_model(seed=1).cpu().state_dict())
    reference = _make_model(seed=1)
    with torch.no_grad():
        inputs_embeds = reference.embed_tokens(_input_ids())
        _assert_close(
            reference(inputs_embeds), offloaded(inputs_embeds), "the offloaded refit"
        )
    del reference
    _assert_all_on_cpu(model, "the refit with offload_module_to_cpu=True")
    on_device = [
        k
        for k, v in offloaded.exp_program.state_dict.items()
        if v.device.type == "cuda"
    ]
    assert not on_device, f"the exported program keeps {on_device[:5]} on the device"
    grown = (
        torch.cuda.memory_allocated()
        - allocated_after_compile
        - inputs_embeds.numel() * inputs_embeds.element_size()
    )
    used_after_refit = _used_device_memory() - base
    print(
        f"[memory] offloaded, after refit: in use {used_after_refit / 2**20:.1f} MiB, "
        f"PyTorch-allocated growth {grown / 2**20:.1f} MiB"
    )


def test_offload_survives_save_and_load():
    model = _make_model()
    reference = copy.deepcopy(model)
    mttm = _compile(model, False, offload_module_to_cpu=True)
    _assert_all_on_cpu(model, "compilation with offload_module_to_cpu=True")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mutable.pkl")
        torch_trt.MutableTorchTensorRTModule.save(mttm, path)
        loaded = torch_trt.MutableTorchTensorRTModule.load(path)
    assert loaded.offload_module_to_cpu is True
    _assert_all_on_cpu(loaded.original_model, "loading an offloaded module")
    inputs_embeds = reference.embed_tokens(_input_ids())
    with torch.no_grad():
        _assert_close(
            reference(inputs_embeds),
            loaded(inputs_embeds),
            "loading an offloaded module",
        )


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_offload_keeps_pytorch_executed_submodules_on_device(use_python_runtime):
    """A partially converted graph: the embedding runs in PyTorch and must stay on the GPU."""
    model = _make_model(TinyLanguageModelWithIds)
    reference = copy.deepcopy(model)
    mttm = torch_trt.MutableTorchTensorRTModule(
        model,
        min_block_size=1,
        use_python_runtime=use_python_runtime,
        torch_executed_ops={torch.ops.aten.embedding.default},
        offload_module_to_cpu=True,
    )
    input_ids = _input_ids()
    with torch.no_grad():
        _assert_close(
            reference(input_ids), mttm(input_ids), "the offloaded partial compilation"
        )
        # Everything TensorRT holds is offloaded; the PyTorch-executed embedding is not
        _assert_all_on_cpu(
            model, "the offloaded partial compilation", {"embed_tokens.weight"}
        )
        new_state = _make_model(TinyLanguageModelWithIds, seed=1).state_dict()
        reference.load_state_dict(new_state)
        mttm.load_state_dict(new_state)
        _assert_close(
            reference(input_ids), mttm(input_ids), "the offloaded partial refit"
        )
        _assert_all_on_cpu(
            model, "the offloaded partial refit", {"embed_tokens.weight"}
        )
