# type: ignore
"""Selective offload (``keep_on_device``) and offloaded submodules called with CUDA inputs.

With ``offload_module_to_cpu=True``, submodules named in
``keep_on_device`` stay on the GPU through compile, refit, recompile and load; an offloaded
submodule called through the module with CUDA inputs runs where its weights are and hands its
outputs back on the inputs' device, with a warning that names it.
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
from .test_mutable_offload import _reset_dynamo  # noqa: E402, F401
from .test_mutable_offload import (  # noqa: E402
    HIDDEN,
    RUNTIMES,
    VOCAB,
    _assert_all_on_cpu,
    _assert_close,
    _input_ids,
    _make_model,
    _mttm_warnings,
    requires_refit,
)

pytestmark = [pytest.mark.unit, requires_refit]
KEPT = "embed_tokens.weight"


def _check_kept_embedding(mttm, model, reference, step: str) -> None:
    """The kept embedding is on the GPU, everything else on the CPU, and both paths work."""
    _assert_all_on_cpu(model, step, {KEPT})
    assert (
        model.embed_tokens.weight.is_cuda
    ), f"after {step}, the kept embedding left the GPU"
    input_ids = _input_ids()
    with torch.no_grad():
        inputs_embeds = mttm.get_input_embeddings()(input_ids)
        assert inputs_embeds.is_cuda
        assert torch.equal(inputs_embeds, reference.embed_tokens(input_ids))
        _assert_close(reference(inputs_embeds), mttm(inputs_embeds), step)


def test_unknown_keep_on_device_name_lists_the_closest():
    with pytest.raises(ValueError) as error:
        torch_trt.MutableTorchTensorRTModule(
            _make_model(), offload_module_to_cpu=True, keep_on_device=("embed_token",)
        )
    assert "closest names: embed_tokens" in str(error.value)


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
def test_kept_submodule_stays_on_device_through_the_lifecycle(use_python_runtime):
    model = _make_model()
    reference = copy.deepcopy(model)
    mttm = torch_trt.MutableTorchTensorRTModule(
        model,
        min_block_size=1,
        use_python_runtime=use_python_runtime,
        offload_module_to_cpu=True,
        keep_on_device=("embed_tokens",),
    )
    with torch.no_grad():
        mttm(reference.embed_tokens(_input_ids()))
    _check_kept_embedding(mttm, model, reference, "compilation")

    new_state = _make_model(seed=1).state_dict()
    reference.load_state_dict(new_state)
    mttm.load_state_dict(new_state)
    _check_kept_embedding(mttm, model, reference, "load_state_dict and the refit")

    mttm.generation_mode = "greedy"
    _check_kept_embedding(mttm, model, reference, "an attribute assignment")

    with torch.no_grad():
        longer = reference.embed_tokens(_input_ids(seq=32))
        _assert_close(reference(longer), mttm(longer), "a recompilation")
    _check_kept_embedding(mttm, model, reference, "a recompilation")

    if use_python_runtime:
        return  # the Python runtime cannot serialize the module
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mutable.pkl")
        torch_trt.MutableTorchTensorRTModule.save(mttm, path)
        loaded = torch_trt.MutableTorchTensorRTModule.load(path)
    assert loaded.keep_on_device == ("embed_tokens",)
    _check_kept_embedding(loaded, loaded.original_model, reference, "save and load")


def test_offloaded_submodule_called_with_cuda_inputs_runs_where_its_weights_are():
    model = _make_model()
    reference = copy.deepcopy(model)
    mttm = torch_trt.MutableTorchTensorRTModule(
        model, min_block_size=1, offload_module_to_cpu=True
    )
    with torch.no_grad():
        mttm(reference.embed_tokens(_input_ids()))
    _assert_all_on_cpu(model, "compilation with offload_module_to_cpu=True")

    from torch_tensorrt.dynamo.runtime import _MutableTorchTensorRTModule as mttm_module

    mttm_module._warned_offloaded_calls.clear()  # the warning is once per process
    with _mttm_warnings() as records, torch.no_grad():
        for _ in range(2):
            input_ids = _input_ids()
            inputs_embeds = mttm.get_input_embeddings()(input_ids)
            assert inputs_embeds.device == input_ids.device
            assert torch.equal(inputs_embeds, reference.embed_tokens(input_ids))
            _assert_close(
                reference(inputs_embeds), mttm(inputs_embeds), "an aligned lookup"
            )
    named = [r for r in records if "embed_tokens" in r.getMessage()]
    assert len(named) == 1, [r.getMessage() for r in records]
    assert "keep_on_device" in named[0].getMessage()
    _assert_all_on_cpu(model, "aligned lookups")


def test_weights_tied_to_a_kept_submodule_stay_on_device():
    model = _make_model()
    model.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False).cuda()
    model.lm_head.weight = model.embed_tokens.weight  # tied, as in many language models
    mttm = torch_trt.MutableTorchTensorRTModule(
        model,
        min_block_size=1,
        offload_module_to_cpu=True,
        keep_on_device="embed_tokens",
    )
    with torch.no_grad():
        mttm(model.embed_tokens(_input_ids()))
    assert model.lm_head.weight.is_cuda and model.embed_tokens.weight.is_cuda
    assert model.layers[0].fc1.weight.device.type == "cpu"


def test_submodule_the_user_put_on_the_cpu_is_not_aligned():
    """Only submodules that the module offloaded run on the CPU for CUDA inputs; others raise, naming it."""
    model = _make_model()
    reference = copy.deepcopy(model)
    mttm = torch_trt.MutableTorchTensorRTModule(model, min_block_size=1)
    with torch.no_grad():
        mttm(reference.embed_tokens(_input_ids()))
    model.norm.to("cpu")  # the user's own placement, not an offload
    hidden = torch.randn(2, 4, HIDDEN, device="cuda")
    with pytest.raises(RuntimeError, match=r"norm \(LayerNorm\).*cuda:0.*CPU"):
        with torch.no_grad():
            mttm.norm(hidden)
