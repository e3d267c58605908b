# type: ignore
"""A model on the second GPU stays there: MutableTorchTensorRTModule on cuda:1 while cuda:0 is current.

Compile, call, an attribute change, a real refit, save and load, with offloading off and on,
``keep_on_device`` and an offloaded embedding called with ids on cuda:1: nothing is allocated on
cuda:0, outputs match PyTorch and the user's weights end where the settings say.
"""

import copy
import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import torch_tensorrt as torch_trt

# _reset_dynamo: the autouse fixture that runs torch._dynamo.reset() after each case
from .test_mutable_offload import _reset_dynamo  # noqa: F401
from .test_mutable_offload import (
    BATCH,
    RUNTIMES,
    SEQ,
    VOCAB,
    TinyLanguageModel,
    _assert_close,
    requires_refit,
)

needs_two_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two GPUs"
)
pytestmark = [pytest.mark.unit, requires_refit, needs_two_gpus]
SECOND = torch.device("cuda:1")
OFFLOAD = [
    pytest.param({}, id="offload-off"),
    pytest.param({"offload_module_to_cpu": True}, id="offload-on"),
    pytest.param(
        {"offload_module_to_cpu": True, "keep_on_device": ("embed_tokens",)},
        id="offload-keep-embedding",
    ),
]


def _devices(model):
    return {
        name: t.device
        for name, t in list(model.named_parameters()) + list(model.named_buffers())
    }


def _expected_devices(model, settings):
    kept = settings.get("keep_on_device", ())
    offload = settings.get("offload_module_to_cpu", False)
    return {
        name: (
            SECOND
            if not offload or any(name.startswith(k + ".") for k in kept)
            else torch.device("cpu")
        )
        for name in _devices(model)
    }


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize("settings", OFFLOAD)
def test_lifecycle_on_the_second_gpu(settings, use_python_runtime):
    torch.cuda.set_device(0)
    torch.manual_seed(0)
    model = TinyLanguageModel().eval().to(SECOND)
    reference = copy.deepcopy(model)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), device=SECOND)
    first_gpu = torch.cuda.memory_allocated(0)

    mttm = torch_trt.MutableTorchTensorRTModule(
        model,
        device=SECOND,
        min_block_size=1,
        use_python_runtime=use_python_runtime,
        **settings,
    )
    with torch.no_grad():
        embeds = reference.embed_tokens(ids)
        _assert_close(reference(embeds), mttm(embeds), "compilation on cuda:1")
        assert _devices(model) == _expected_devices(model, settings)

        # The embedding looked up through the module with ids on cuda:1, offloaded or not
        looked_up = mttm.get_input_embeddings()(ids)
        assert looked_up.device == SECOND
        assert torch.equal(looked_up, embeds)

        # An attribute change, then a real refit
        mttm.norm.eps = 1e-5
        mttm(embeds)
        for m in (model, reference):
            m.layers[0].fc1.weight.mul_(-1.0)
        before = reference(embeds)
        _assert_close(before, mttm(embeds), "a refit on cuda:1")
        assert _devices(model) == _expected_devices(model, settings)

    if not use_python_runtime:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "mttm.pkl")
            torch_trt.MutableTorchTensorRTModule.save(mttm, path)
            loaded = torch_trt.MutableTorchTensorRTModule.load(path)
        with torch.no_grad():
            _assert_close(before, loaded(embeds), "load on cuda:1")
        assert _devices(loaded.original_model) == _expected_devices(model, settings)

    torch.cuda.synchronize(SECOND)
    assert torch.cuda.memory_allocated(0) == first_gpu, "memory was allocated on cuda:0"
    assert torch.cuda.current_device() == 0
