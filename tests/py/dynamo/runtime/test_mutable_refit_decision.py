# type: ignore
"""The refit decision of MutableTorchTensorRTModule, from the contents of the weights, on a GPU.

Every way a user changes a weight must end with an engine that matches PyTorch (each case first
checks that the change really moves PyTorch's output), with exactly the refit or recompilation
it needs; what changes nothing (attribute assignments, weight reads, writes of equal values, a
same-storage re-wrap, a device move) must cost no refit, even where the engine's outputs differ
from PyTorch's. On a build that decides by running the model and comparing outputs, the cases
that guard against stale engines and false refits fail.
"""

import copy
import os
import tempfile
import time

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available", allow_module_level=True)

import torch_tensorrt as torch_trt
from torch_tensorrt.dynamo.runtime import _MutableTorchTensorRTModule as mttm_module

# _reset_dynamo: the autouse fixture that runs torch._dynamo.reset() after each case
from .test_mutable_offload import _reset_dynamo  # noqa: F401
from .test_mutable_offload import (
    DEVICE,
    _assert_close,
    _input_ids,
    _make_model,
    _weight_bytes,
    requires_refit,
)

pytestmark = [pytest.mark.unit, requires_refit]
RefitFlag = mttm_module.RefitFlag
RUNTIMES = [
    pytest.param(False, id="cpp-runtime"),
    pytest.param(True, id="python-runtime"),
]
OFFLOAD = [
    pytest.param(False, id="offload-off"),
    pytest.param(True, id="offload-on"),
]


@pytest.fixture
def counted(monkeypatch):
    """Counts of refits and compilations."""
    counts = {"refit": 0, "compile": 0}
    cls = torch_trt.MutableTorchTensorRTModule
    refit, compile_ = cls.refit_gm, cls.compile

    def counting_refit(self):
        counts["refit"] += 1
        return refit(self)

    def counting_compile(self):
        counts["compile"] += 1
        return compile_(self)

    monkeypatch.setattr(cls, "refit_gm", counting_refit)
    monkeypatch.setattr(cls, "compile", counting_compile)
    return counts


def _compiled(counted, offload=False, use_python_runtime=False, model=None):
    model = _make_model() if model is None else model
    mttm = torch_trt.MutableTorchTensorRTModule(
        model,
        min_block_size=1,
        offload_module_to_cpu=offload,
        use_python_runtime=use_python_runtime,
    )
    with torch.no_grad():
        x = model.embed_tokens.weight[_input_ids()].to(DEVICE)
        mttm(x)
    counted.update(refit=0, compile=0)
    return model, mttm, x


def _pytorch_output(model, x):
    """PyTorch's output, the model moved to the device for it and back where it was."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.to(DEVICE)(x).clone()
    model.to(device)
    return out


def _assert_moves(model, x, mutate, step):
    """Apply ``mutate`` and check that PyTorch's output moved: else a stale engine could not show."""
    before = _pytorch_output(model, x)
    with torch.no_grad():
        mutate()
    after = _pytorch_output(model, x)
    similarity = torch_trt.dynamo.utils.cosine_similarity(before, after)
    assert similarity < 0.99, f"{step} does not change PyTorch's output ({similarity})"
    return after


def _lora_fuse(model, mttm):
    # How peft's LoraLayer.merge() and diffusers' fuse_lora() write a rank-16 delta
    torch.manual_seed(1)
    fc1 = mttm.layers[0].fc1
    device = fc1.weight.device  # the CPU when the module offloads
    a = torch.randn(16, fc1.in_features, device=device) * 0.05
    b = torch.randn(fc1.out_features, 16, device=device) * 0.05
    fc1.weight.data += 2.0 * (b @ a)


def _sync_through_named_parameters(model, mttm):
    source = _make_model(seed=3)
    for (_, p), (_, q) in zip(mttm.named_parameters(), source.named_parameters()):
        p.data.copy_(q.data.to(p.device))
    for (_, b), (_, c) in zip(mttm.named_buffers(), source.named_buffers()):
        b.data.copy_(c.data.to(b.device))
    mttm.eval()


def _fused_adamw_step(model, mttm):
    # The optimizer holds the parameters from before the last call; nothing goes through the module,
    # and a fused step moves no version counter: it is seen through the optimizer step hook
    params = [p for p in model.parameters() if p.is_cuda and p.dtype == torch.float32]
    optimizer = torch.optim.AdamW(params, lr=0.05, fused=True)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()


MUTATIONS = [
    pytest.param(lambda m, mt: mt.layers[0].fc1.weight.mul_(-1.0), id="in-place"),
    pytest.param(_lora_fuse, id="lora-fuse-data-add"),
    pytest.param(
        lambda m, mt: mt.layers[0].fc1.weight.data.copy_(
            torch.randn_like(mt.layers[0].fc1.weight)
        ),
        id="data-copy",
    ),
    pytest.param(
        lambda m, mt: setattr(
            mt.layers[0].fc1.weight, "data", -mt.layers[0].fc1.weight.data
        ),
        id="data-rebind",
    ),
    pytest.param(
        lambda m, mt: setattr(
            mt.layers[0].fc1, "weight", nn.Parameter(-m.layers[0].fc1.weight)
        ),
        id="parameter-reassignment",
    ),
    pytest.param(_sync_through_named_parameters, id="named-parameters-sync-eval"),
    pytest.param(
        lambda m, mt: mt.load_state_dict(
            {k: v * -1.0 for k, v in m.state_dict().items()}
        ),
        id="load-state-dict",
    ),
    pytest.param(
        lambda m, mt: mt.load_state_dict(
            {k: v * -1.0 for k, v in m.state_dict().items()}, assign=True
        ),
        id="load-state-dict-assign",
    ),
]


@pytest.mark.parametrize("offload", OFFLOAD)
@pytest.mark.parametrize("mutate", MUTATIONS)
def test_every_mutation_style_refits_once(counted, mutate, offload):
    model, mttm, x = _compiled(counted, offload)
    expected = _assert_moves(model, x, lambda: mutate(model, mttm), "the mutation")
    with torch.no_grad():
        _assert_close(expected, mttm(x), "the mutation")
        mttm(x)
    assert counted == {"refit": 1, "compile": 0}, counted


def test_fused_optimizer_step_on_earlier_references_refits(counted):
    model, mttm, x = _compiled(counted)
    expected = _assert_moves(
        model, x, lambda: _fused_adamw_step(model, mttm), "a fused AdamW step"
    )
    with torch.no_grad():
        _assert_close(expected, mttm(x), "a fused AdamW step")
    assert counted == {"refit": 1, "compile": 0}, counted


@pytest.mark.parametrize("use_python_runtime", RUNTIMES)
@pytest.mark.parametrize("offload", OFFLOAD)
def test_both_runtimes_follow_a_lora_fuse(counted, offload, use_python_runtime):
    model, mttm, x = _compiled(counted, offload, use_python_runtime)
    expected = _assert_moves(model, x, lambda: _lora_fuse(model, mttm), "a LoRA fuse")
    with torch.no_grad():
        _assert_close(expected, mttm(x), "a LoRA fuse")
    assert counted == {"refit": 1, "compile": 0}, counted


NO_CHANGES = [
    pytest.param(lambda m, mt: setattr(mt, "generation_step", 3), id="attribute"),
    pytest.param(
        lambda m, mt: [p.sum() for _, p in mt.named_parameters()], id="weight-reads"
    ),
    pytest.param(lambda m, mt: mt.layers[0].fc1.weight.mul_(1.0), id="in-place-equal"),
    pytest.param(
        lambda m, mt: mt.load_state_dict(copy.deepcopy(m.state_dict())),
        id="load-state-dict-equal",
    ),
    pytest.param(
        lambda m, mt: setattr(
            mt.layers[0].fc1,
            "weight",
            nn.Parameter(mt.original_model.layers[0].fc1.weight),
        ),
        id="same-storage-rewrap",
    ),
    pytest.param(lambda m, mt: m.to("cpu").to(DEVICE), id="device-round-trip"),
]


@pytest.mark.parametrize("offload", OFFLOAD)
@pytest.mark.parametrize("touch", NO_CHANGES)
def test_changes_of_nothing_stay_live(counted, touch, offload):
    model, mttm, x = _compiled(counted, offload)
    expected = _pytorch_output(model, x)
    with torch.no_grad():
        touch(model, mttm)
        if offload:
            mttm._offload_original_model()  # where the module keeps the weights
        _assert_close(expected, mttm(x), "a change of nothing")
    assert counted == {"refit": 0, "compile": 0}, counted
    assert mttm.refit_state.get_state() == RefitFlag.LIVE


def test_same_storage_rewrap_is_live_at_the_check(counted):
    # As test_resnet18_modify_attribute_no_refit in test_mutable_torchtrt_module.py, on this model
    model, mttm, x = _compiled(counted)
    mttm.layers[0].fc1.weight = nn.Parameter(mttm.original_model.layers[0].fc1.weight)
    assert mttm.refit_state.get_state() == RefitFlag.UNKNOWN
    mttm.update_refit_condition()
    assert mttm.refit_state.get_state() == RefitFlag.LIVE


class NoisyOutput(nn.Module):
    """The language model with its output fed through ``sin(1e6 * x)``.

    Rounding differences between the engine and PyTorch (a few ulp) become differences of order
    one, far beyond the rtol/atol of 5e-3 with which an output comparison decides whether
    weights changed (pytorch/TensorRT#4153 is the real-world form of this).
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.lm = _make_model(seed=seed)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.lm(inputs_embeds) * 1e6)


@pytest.mark.parametrize("seed", range(5))
def test_no_false_refit_when_engine_and_pytorch_outputs_differ(counted, seed):
    model = NoisyOutput(seed).eval()
    mttm = torch_trt.MutableTorchTensorRTModule(model, min_block_size=1)
    with torch.no_grad():
        x = model.lm.embed_tokens(_input_ids())
        engine_output = mttm(x)
        # Without this the test could not fail on a decision that compares outputs
        assert not torch.allclose(engine_output, model(x), rtol=5e-3, atol=5e-3)
        counted.update(refit=0, compile=0)
        for i in range(3):
            mttm.generation_step = i
            mttm(x)
            _ = mttm.lm.layers[0].fc1.weight
            mttm(x)
    assert counted == {"refit": 0, "compile": 0}, counted


@pytest.mark.parametrize("offload", OFFLOAD)
def test_attribute_assignments_neither_move_nor_run_the_model(counted, offload):
    model, mttm, x = _compiled(counted, offload)
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    device_before = next(model.parameters()).device
    timings = []
    with torch.no_grad():
        for i in range(5):
            mttm.generation_step = i
            torch.cuda.synchronize()
            start = time.perf_counter()
            mttm(x)
            torch.cuda.synchronize()
            timings.append((time.perf_counter() - start) * 1e3)
    assert counted == {"refit": 0, "compile": 0}, counted
    assert not forwards, "the user's model was run to decide"
    assert next(model.parameters()).device == device_before
    print(f"[refit-decision] offload={offload}: call after an assignment {timings} ms")


def test_reading_every_weight_allocates_nothing(counted):
    model, mttm, x = _compiled(counted)
    with torch.no_grad():
        mttm(x)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    reads = [p for _, p in mttm.named_parameters()]
    reads += [mttm.layers[i].fc1.weight for i in range(len(model.layers))]
    with torch.no_grad():
        mttm(x)
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    assert grown < 0.01 * _weight_bytes(model), f"{grown} bytes held after weight reads"
    assert counted == {"refit": 0, "compile": 0}, counted


def test_a_refit_of_a_model_moved_to_the_cpu_leaves_no_device_copy(counted):
    model, mttm, x = _compiled(counted)
    model.to("cpu")  # the user's move, offloading off: not a weight change
    with torch.no_grad():
        _assert_close(_pytorch_output(model, x), mttm(x), "the move")
        assert counted == {"refit": 0, "compile": 0}, counted
        expected = _assert_moves(
            model, x, lambda: mttm.layers[0].fc1.weight.mul_(-1.0), "the change"
        )
        _assert_close(expected, mttm(x), "the refit")
    assert counted == {"refit": 1, "compile": 0}, counted
    assert next(model.parameters()).device.type == "cpu"
    on_device = [
        k for k, v in mttm.exp_program.state_dict.items() if v.device.type == "cuda"
    ]
    assert not on_device, f"the exported program keeps {on_device[:5]} on the device"


@pytest.mark.parametrize("offload", OFFLOAD)
def test_a_change_pending_at_save_is_refitted_after_load(counted, offload):
    model, mttm, x = _compiled(counted, offload)
    expected = _assert_moves(
        model, x, lambda: mttm.layers[0].fc1.weight.mul_(-1.0), "the change"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mttm.pkl")
        torch_trt.MutableTorchTensorRTModule.save(mttm, path)
        loaded = torch_trt.MutableTorchTensorRTModule.load(path)
    with torch.no_grad():
        _assert_close(expected, loaded(x), "load")
    assert counted == {"refit": 1, "compile": 0}, counted


@pytest.mark.parametrize("offload", OFFLOAD)
def test_inference_mode_weights(counted, offload):
    with torch.inference_mode():
        model = _make_model()
        model.bn = nn.BatchNorm1d(8).to(DEVICE).eval()  # buffers made in inference mode
        model, mttm, x = _compiled(counted, offload, model=model)
        assert next(model.parameters()).is_inference()
        expected = _assert_moves(
            model, x, lambda: mttm.layers[0].fc1.weight.mul_(-1.0), "in-place"
        )
        _assert_close(expected, mttm(x), "an in-place write in inference mode")
        new = nn.Parameter(-model.layers[0].fc2.weight, requires_grad=False)
        expected = _assert_moves(
            model, x, lambda: setattr(mttm.layers[0].fc2, "weight", new), "set"
        )
        _assert_close(expected, mttm(x), "a parameter assigned in inference mode")
    assert counted == {"refit": 2, "compile": 0}, counted


def test_offload_setting_must_be_a_bool():
    with pytest.raises(TypeError, match="offload_module_to_cpu must be a bool"):
        torch_trt.MutableTorchTensorRTModule(
            _make_model(), offload_module_to_cpu="False"
        )


def test_fingerprints_do_not_depend_on_the_device():
    def fingerprints(model):
        return mttm_module._weight_fingerprints(mttm_module._weight_tensors(model))

    model = _make_model()
    model.odd = torch.randn(4099, dtype=torch.float16, device=DEVICE)  # a partial row
    on_gpu = fingerprints(model)
    on_cpu = fingerprints(copy.deepcopy(model).cpu())
    assert on_gpu == on_cpu
    # The GPU's integer products against the CPU's, row by row, at every level
    rows = model.embed_tokens.weight.detach().reshape(-1).view(torch.int8)[: 1 << 24]
    rows = rows.view(-1, mttm_module._FINGERPRINT_ROW)
    for level in range(3):
        assert torch.equal(
            mttm_module._hash_rows(rows, level).cpu(),
            mttm_module._hash_rows(rows.cpu(), level),
        )
    with torch.no_grad():
        model.norm.weight[-1] += 1e-3
    assert fingerprints(model)["norm.weight"] != on_gpu["norm.weight"]


# ------------------------------------------------------------------------------------------
# A transformers model with peft LoRA adapters, and its rotary embedding


def _llama(counted, offload=False):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        initializer_range=0.3,  # attention large enough for rotary changes to show
    )
    torch.manual_seed(0)

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = transformers.LlamaModel(config)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, use_cache=False).last_hidden_state

    model = Decoder().eval().to(DEVICE)
    mttm = torch_trt.MutableTorchTensorRTModule(
        model, min_block_size=1, offload_module_to_cpu=offload
    )
    ids = torch.randint(0, 1024, (2, 16), device=DEVICE)
    with torch.no_grad():
        mttm(ids)
    counted.update(refit=0, compile=0)
    return model, mttm, ids


@pytest.mark.parametrize("offload", OFFLOAD)
def test_peft_lora_fused_and_unloaded(counted, offload):
    peft = pytest.importorskip("peft")
    model, mttm, ids = _llama(counted, offload)
    config = peft.LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )

    def fuse_and_unload():
        peft.inject_adapter_in_model(config, mttm)
        for name, module in list(mttm.named_modules()):
            if isinstance(module, peft.tuners.lora.LoraLayer):
                module.merge()
                parent = mttm.get_submodule(name.rpartition(".")[0])
                setattr(parent, name.rpartition(".")[2], module.get_base_layer())

    expected = _assert_moves(model, ids, fuse_and_unload, "a fused LoRA")
    with torch.no_grad():
        _assert_close(expected, mttm(ids), "a fused and unloaded LoRA")
    assert counted == {"refit": 1, "compile": 0}, counted


def test_rotary_inv_freq_change_recompiles(counted):
    model, mttm, ids = _llama(counted)
    rotary = model.model.rotary_emb
    assert "inv_freq" not in model.state_dict(), "inv_freq is a non-persistent buffer"
    expected = _assert_moves(
        model, ids, lambda: mttm.model.rotary_emb.inv_freq.mul_(0.25), "rope scaling"
    )
    with torch.no_grad():
        _assert_close(expected, mttm(ids), "a rotary inv_freq change")
    assert counted["compile"] == 1, counted
    assert rotary.inv_freq.device.type == "cuda"
