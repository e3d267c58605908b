"""The refit decision from the weights' contents (patch 0004), on the CPU with the compiler faked.

The patched ``_MutableTorchTensorRTModule.py`` of every supported release is loaded with
``torch_tensorrt`` faked (``mttm_harness``): the "engine" holds a copy of the weights taken when
it was built, so a stale engine gives outputs that differ from PyTorch's. Each mutation first
checks that it really changes PyTorch's output, then that the module follows it with exactly
the refits or recompilations it needs, and that changes of nothing cost no refit.
"""

import copy
import os

import pytest

torch = pytest.importorskip("torch")  # before mttm_harness, which imports torch

from conftest import VERSIONS  # noqa: E402
from mttm_harness import MTTM, Calls, load_mttm  # noqa: E402

nn = torch.nn

@pytest.fixture
def fingerprints(monkeypatch, patched_trees):
    source = (patched_trees("torch_tensorrt", VERSIONS[-1]) / MTTM).read_text()
    module = load_mttm(monkeypatch, source, Calls())

    def of(tensor):
        holder = nn.Module()
        holder.t = tensor  # a tensor attribute, fingerprinted like parameters and buffers
        return module._weight_fingerprints(module._weight_tensors(holder))["t"]

    return of


class Net(nn.Module):
    """A small model whose every tensor reaches the output, ``embed`` aside."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(2))
        self.heads = nn.ModuleDict({"a": nn.Linear(16, 16)})
        self.register_buffer("shift", torch.zeros(16))
        self.register_buffer("scale", torch.ones(16), persistent=False)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return (self.heads["a"](self.fc(x)) * self.scale + self.shift).relu()


def _x():
    return torch.randn(2, 4, 16)


def _compiled(mttm_module, calls, **settings):
    torch.manual_seed(0)
    model = Net().eval()
    mttm = mttm_module.MutableTorchTensorRTModule(model, **settings)
    x = _x()
    with torch.no_grad():
        mttm(x)
    calls.refit = 0
    calls.compile.clear()
    return model, mttm, x


def _outputs_move(model, x, mutate):
    """Apply ``mutate``; return whether PyTorch's output moved (the precondition of a stale engine)."""
    with torch.no_grad():
        before = model(x).clone()
        mutate()
        return not torch.allclose(before, model(x))


# ------------------------------------------------------------------------------------------
# The fingerprint


def test_fingerprint_sees_every_one_element_change(fingerprints):
    torch.manual_seed(0)
    base = torch.randn((1 << 22) + 70001)  # more than one block, a partial row at the end
    reference = fingerprints(base)
    assert fingerprints(base.clone()) == reference
    for index in (0, 1, 65535, 65536, 1 << 21, (1 << 22) + 3, base.numel() - 1):
        for change in (lambda v: -v, lambda v: v + 1e-7, lambda v: torch.nextafter(v, v + 1)):
            mutated = base.clone()
            mutated[index] = change(mutated[index])
            if torch.equal(mutated, base):
                continue
            assert fingerprints(mutated) != reference, (index, change)
    assert fingerprints(-base) != reference  # every word differs in its sign bit only
    swapped = base.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert fingerprints(swapped) != reference


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.int8, torch.bool, torch.float64]
)
def test_fingerprint_covers_trailing_bytes_and_every_dtype(fingerprints, dtype):
    for n in (1, 2, 3, 5, 7, 4097):
        base = torch.arange(n).to(dtype)
        mutated = base.clone()
        mutated[-1] = 1 if dtype is torch.bool and not mutated[-1] else 0
        mutated[-1] = mutated[-1] if not torch.equal(mutated, base) else 3
        assert not torch.equal(mutated, base)
        assert fingerprints(mutated)[3] != fingerprints(base)[3], (dtype, n)


def test_fingerprint_depends_on_values_not_on_layout(fingerprints):
    torch.manual_seed(0)
    base = torch.randn(300, 500)
    transposed_back = base.t().contiguous().t()  # same values, column-major storage
    assert not transposed_back.is_contiguous()
    assert fingerprints(transposed_back) == fingerprints(base)
    half = torch.randn(101, dtype=torch.float16)
    assert fingerprints(half[1:]) == fingerprints(half[1:].clone())  # odd storage offset
    assert fingerprints(base.reshape(500, 300))[0] != fingerprints(base)[0]


# ------------------------------------------------------------------------------------------
# The decision in the module's lifecycle


def _data_add(m, mt):
    mt.fc.weight.data += 0.5  # how peft and diffusers fuse a LoRA into the base layer


def _sync_through_named_parameters(m, mt):
    for _, p in mt.named_parameters():
        p.data.copy_(p.data * 1.5)


def _sync_through_state_dict(m, mt):
    for _, t in mt.state_dict().items():
        t.copy_(t * 1.5)


def _optimizer_step(**kind):
    def step(m, mt):
        # The optimizer holds references taken before the last call: nothing goes through the
        # module. A fused step moves no version counter; the optimizer step hook sees it.
        optimizer = torch.optim.AdamW(m.parameters(), lr=0.5, **kind)
        with torch.enable_grad():
            m(_x()).sum().backward()
        optimizer.step()

    return step


def _numpy_view(m, mt):
    mt.fc.weight.detach().numpy()[:] *= 1.5


MUTATIONS = [
    pytest.param(lambda m, mt: mt.fc.weight.mul_(1.5), id="in-place"),
    pytest.param(_data_add, id="data-add-lora-fuse"),
    pytest.param(lambda m, mt: mt.fc.weight.data.copy_(m.fc.weight * 2), id="data-copy"),
    pytest.param(
        lambda m, mt: setattr(mt.fc.weight, "data", m.fc.weight.data * 2),
        id="data-rebind",
    ),
    pytest.param(
        lambda m, mt: setattr(mt.fc, "weight", nn.Parameter(m.fc.weight * 2)),
        id="parameter-reassignment",
    ),
    pytest.param(_sync_through_named_parameters, id="named-parameters-data-copy"),
    pytest.param(_sync_through_state_dict, id="state-dict-copy"),
    pytest.param(_optimizer_step(foreach=True), id="optimizer-step-foreach"),
    pytest.param(_optimizer_step(fused=True), id="optimizer-step-fused"),
    pytest.param(_numpy_view, id="numpy-view"),
    pytest.param(lambda m, mt: mt.shift.data.add_(1), id="buffer-read-data-write"),
    pytest.param(
        lambda m, mt: [l.weight.data.mul_(2) for l in mt.blocks], id="module-list-loop"
    ),
    pytest.param(
        lambda m, mt: [l.weight.data.mul_(2) for l in mt.heads.values()],
        id="module-dict-values",
    ),
    pytest.param(
        lambda m, mt: mt.load_state_dict(
            {k: v * 2 for k, v in m.state_dict().items()}
        ),
        id="load-state-dict",
    ),
    pytest.param(
        lambda m, mt: mt.load_state_dict(
            {k: v * 2 for k, v in m.state_dict().items()}, assign=True
        ),
        id="load-state-dict-assign",
    ),
]


@pytest.mark.parametrize("offload", [False, True], ids=["offload-off", "offload-on"])
@pytest.mark.parametrize("mutate", MUTATIONS)
def test_every_mutation_style_refits_once(mttm_module, calls, mutate, offload):
    model, mttm, x = _compiled(mttm_module, calls, offload_module_to_cpu=offload)
    assert _outputs_move(model, x, lambda: mutate(model, mttm))
    with torch.no_grad():
        out = mttm(x)
        assert torch.allclose(out, model(x)), "stale engine"
        assert calls.refit == 1 and not calls.compile
        mttm(x)
    assert calls.refit == 1, "a second call refitted again"


NO_CHANGES = [
    pytest.param(lambda m, mt: setattr(mt, "generation_step", 3), id="attribute"),
    pytest.param(lambda m, mt: mt.fc.weight.sum(), id="weight-read"),
    pytest.param(lambda m, mt: list(mt.named_parameters()), id="named-parameters"),
    pytest.param(lambda m, mt: mt.fc.weight.mul_(1.0), id="in-place-same-values"),
    pytest.param(
        lambda m, mt: mt.load_state_dict(copy.deepcopy(m.state_dict())),
        id="load-state-dict-same-values",
    ),
    pytest.param(
        lambda m, mt: setattr(
            mt.fc, "weight", nn.Parameter(mt.original_model.fc.weight)
        ),
        id="same-storage-rewrap",
    ),
    pytest.param(lambda m, mt: mt.eval(), id="eval"),
    pytest.param(lambda m, mt: m.to(torch.float32), id="to-same-dtype"),
]


@pytest.mark.parametrize("offload", [False, True], ids=["offload-off", "offload-on"])
@pytest.mark.parametrize("touch", NO_CHANGES)
def test_changes_of_nothing_stay_live(mttm_module, calls, touch, offload):
    model, mttm, x = _compiled(mttm_module, calls, offload_module_to_cpu=offload)
    with torch.no_grad():
        touch(model, mttm)
        assert torch.allclose(mttm(x), model(x))
    assert calls.refit == 0 and not calls.compile
    assert mttm.refit_state.get_state().name == "LIVE"


def test_the_decision_names_what_changed(mttm_module, calls):
    model, mttm, x = _compiled(mttm_module, calls)
    with torch.no_grad():
        mttm.fc.bias.add_(1)
    mttm.update_refit_condition()
    assert mttm.refit_state.get_state().name == "NEEDS_REFIT"
    assert mttm.changed_weights == ("fc.bias",)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda m, mt: setattr(mt, "extra", nn.Linear(8, 8)), id="added-submodule"
        ),
        pytest.param(
            lambda m, mt: setattr(mt, "lora_b", nn.Parameter(torch.zeros(8, 8))),
            id="zero-initialised-adapter",
        ),
        pytest.param(lambda m, mt: mt.double(), id="new-dtype"),
        pytest.param(lambda m, mt: mt.scale.mul_(2), id="non-persistent-buffer"),
        pytest.param(
            lambda m, mt: setattr(mt.heads, "a", mt.blocks[0]), id="tie-two-layers"
        ),
    ],
)
def test_structural_changes_and_non_persistent_buffers_recompile(
    mttm_module, calls, mutate
):
    model, mttm, x = _compiled(mttm_module, calls)
    with torch.no_grad():
        mutate(model, mttm)
        mttm(x.to(model.fc.weight.dtype))
    assert len(calls.compile) == 1 and calls.refit == 0


def test_untying_tied_weights_recompiles(mttm_module, calls):
    torch.manual_seed(0)
    model = Net().eval()
    model.heads["a"] = model.blocks[0]  # one Linear used twice: the engine has one weight for both
    mttm = mttm_module.MutableTorchTensorRTModule(model)
    x = _x()
    with torch.no_grad():
        mttm(x)
        calls.compile.clear()
        assert _outputs_move(
            model, x, lambda: setattr(mttm.heads, "a", copy.deepcopy(model.blocks[0]))
        ) is False  # untied, still equal: the structure changed, not the values
        mttm.heads["a"].weight.mul_(2)
        assert torch.allclose(mttm(x), model(x)), "stale engine"
    assert len(calls.compile) == 1 and calls.refit == 0


class WithConstants(Net):
    """Tensor attributes read by forward, directly and in containers, and one that is not."""

    def __init__(self):
        super().__init__()
        self.offset = torch.zeros(16)
        self.extra = [torch.zeros(16)]
        self.table = {"bias": torch.zeros(16)}

    def forward(self, x):
        return super().forward(x) + self.offset + self.extra[0] + self.table["bias"]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda mt: mt.offset.add_(1), id="attribute-in-place"),
        pytest.param(lambda mt: setattr(mt, "offset", torch.ones(16)), id="attribute"),
        pytest.param(lambda mt: mt.extra[0].add_(1), id="list-item-in-place"),
        pytest.param(lambda mt: setattr(mt, "extra", [torch.ones(16)]), id="list"),
        pytest.param(
            lambda mt: mt.table.__setitem__("bias", torch.ones(16)), id="dict-item"
        ),
    ],
)
def test_tensor_constants_of_the_graph_recompile(mttm_module, calls, mutate):
    torch.manual_seed(0)
    model = WithConstants().eval()
    mttm = mttm_module.MutableTorchTensorRTModule(model)
    x = _x()
    with torch.no_grad():
        mttm(x)
        calls.compile.clear()
        assert _outputs_move(model, x, lambda: mutate(mttm))
        assert torch.allclose(mttm(x), model(x)), "stale engine"
    assert len(calls.compile) == 1 and calls.refit == 0


def test_tensors_kept_on_the_model_but_not_read_by_forward_cost_nothing(
    mttm_module, calls
):
    model, mttm, x = _compiled(mttm_module, calls)
    with torch.no_grad():
        for _ in range(3):
            mttm.last_output = mttm(x)  # a tensor attribute the graph does not read
    assert calls.refit == 0 and not calls.compile


def test_fused_optimizer_steps_after_load_and_after_a_live_check(
    mttm_module, calls, tmp_path
):
    model, mttm, x = _compiled(mttm_module, calls)
    path = os.path.join(tmp_path, "m.pkl")
    cls = mttm_module.MutableTorchTensorRTModule
    cls.save(mttm, path)
    loaded = cls.load(path)
    params = list(loaded.original_model.parameters())
    with torch.no_grad():
        loaded(x)
        # A Parameter re-wrapped around the same data: LIVE, and the new object is watched
        loaded.fc.weight = nn.Parameter(loaded.original_model.fc.weight.detach())
        loaded(x)
    assert calls.refit == 0
    params = list(loaded.original_model.parameters())
    model = loaded.original_model

    def step():
        optimizer = torch.optim.AdamW(params, lr=0.5, fused=True)
        with torch.enable_grad():
            model(x).sum().backward()
        optimizer.step()

    assert _outputs_move(model, x, step)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x)), "stale engine"
    assert calls.refit == 1


def test_submodule_load_state_dict_in_inference_mode(mttm_module, calls):
    with torch.inference_mode():
        torch.manual_seed(0)
        model = Net().eval()
        mttm = mttm_module.MutableTorchTensorRTModule(model)
        x = _x()
        mttm(x)
        new = {k: v * 2 for k, v in model.fc.state_dict().items()}
        assert _outputs_move(model, x, lambda: mttm.fc.load_state_dict(new))
        assert torch.allclose(mttm(x), model(x)), "stale engine"


@pytest.mark.parametrize(
    "tensor",
    [
        pytest.param(lambda: torch.randn(8, dtype=torch.complex64).conj(), id="conj-view"),
        pytest.param(lambda: -torch.randn(8), id="negative"),
        pytest.param(
            lambda: torch.quantize_per_tensor(torch.randn(8), 0.1, 0, torch.qint8),
            id="quantized",
        ),
    ],
)
def test_unusual_tensors_are_fingerprinted_or_skipped_without_error(
    fingerprints, tensor
):
    fingerprints(tensor())


def test_manual_refit_and_compile_record_the_weights(mttm_module, calls):
    model, mttm, x = _compiled(mttm_module, calls)
    model.fc.weight.data.mul_(2)  # the documented blind spot: no trace through the module
    mttm.refit_gm()  # what the documentation says to do after such a write
    with torch.no_grad():
        assert torch.allclose(mttm(x), model(x))
        mttm(x)
    assert calls.refit == 1 and not calls.compile


def _raise(*_, **__):
    raise RuntimeError("the compiler failed")


def test_a_refit_that_raises_leaves_the_change_to_the_next_call(mttm_module, calls, monkeypatch):
    model, mttm, x = _compiled(mttm_module, calls)
    assert _outputs_move(model, x, lambda: mttm.fc.weight.mul_(2))
    with monkeypatch.context() as m:
        m.setattr(mttm_module, "refit_module_weights", _raise)
        with pytest.raises(RuntimeError, match="the compiler failed"):
            mttm.refit_gm()  # called by hand, its error caught by the caller
    with torch.no_grad():
        assert torch.allclose(mttm(x), model(x))
    assert calls.refit == 1


def test_a_compile_that_raises_leaves_no_record_of_the_weights(mttm_module, calls, monkeypatch):
    model, mttm, x = _compiled(mttm_module, calls)
    assert _outputs_move(model, x, lambda: mttm.fc.weight.mul_(2))
    with monkeypatch.context() as m:
        m.setattr(mttm_module, "refit_module_weights", _raise)
        m.setattr(mttm_module, "dynamo_compile", _raise)
        with pytest.raises(RuntimeError, match="the compiler failed"), torch.no_grad():
            mttm(x)  # the refit fails, and so does the compile that follows it
    assert mttm.weight_fingerprints is None
    with torch.no_grad():
        assert torch.allclose(mttm(x), model(x))


def test_writes_without_any_trace_through_the_module_are_the_documented_limit(
    mttm_module, calls
):
    model, mttm, x = _compiled(mttm_module, calls)
    assert _outputs_move(model, x, lambda: model.fc.weight.data.mul_(2))
    with torch.no_grad():
        mttm(x)
    assert calls.refit == 0  # see "What the refit check cannot see" in docs/offloading.md


@pytest.mark.parametrize("offload", [False, True], ids=["offload-off", "offload-on"])
def test_a_change_pending_at_save_is_refitted_after_load(
    mttm_module, calls, tmp_path, offload
):
    model, mttm, x = _compiled(mttm_module, calls, offload_module_to_cpu=offload)
    with torch.no_grad():
        mttm.fc.weight.data.mul_(2)
    path = os.path.join(tmp_path, "m.pkl")
    cls = mttm_module.MutableTorchTensorRTModule
    cls.save(mttm, path)
    loaded = cls.load(path)
    assert "run_info" not in loaded.__dict__
    with torch.no_grad():
        assert torch.allclose(loaded(x), loaded.original_model(x))
        loaded(x)
    assert calls.refit == 1


def test_a_module_saved_without_fingerprints_refits_once_after_load(
    mttm_module, calls, tmp_path
):
    model, mttm, x = _compiled(mttm_module, calls)
    mttm.__dict__["weight_fingerprints"] = None  # as a release pickles it
    mttm.__dict__["run_info"] = (x, {}, x)
    path = os.path.join(tmp_path, "m.pkl")
    cls = mttm_module.MutableTorchTensorRTModule
    cls.save(mttm, path)
    loaded = cls.load(path)
    with torch.no_grad():
        loaded(x)
        loaded(x)
    # Nothing says what the engine was built from: one refit
    assert (calls.refit, len(calls.compile)) == (1, 0)
    assert "run_info" not in loaded.__dict__


@pytest.mark.parametrize("offload", [False, True], ids=["offload-off", "offload-on"])
def test_inference_mode_weights(mttm_module, calls, offload):
    with torch.inference_mode():
        torch.manual_seed(0)
        model = Net().eval()
        model.norm = nn.BatchNorm1d(4)  # buffers created and updated in inference mode
        mttm = mttm_module.MutableTorchTensorRTModule(
            model, offload_module_to_cpu=offload
        )
        x = _x()
        mttm(x)
        assert model.fc.weight.is_inference()
        mttm.fc.weight.add_(1)
        assert torch.allclose(mttm(x), model(x))
        mttm.fc.weight = nn.Parameter(torch.ones(16, 16))
        assert torch.allclose(mttm(x), model(x))
    assert calls.refit == 2


def test_the_last_inputs_and_outputs_are_not_kept(mttm_module, calls):
    model, mttm, x = _compiled(mttm_module, calls)
    with torch.no_grad():
        mttm(x)
    assert "run_info" not in mttm.__dict__


@pytest.mark.parametrize("value", ["False", "True", 0, 1, None])
def test_offload_setting_must_be_a_bool(mttm_module, value):
    with pytest.raises(TypeError, match="offload_module_to_cpu must be a bool"):
        mttm_module.MutableTorchTensorRTModule(Net().eval(), offload_module_to_cpu=value)


# ------------------------------------------------------------------------------------------
# A transformers model: a peft LoRA fused and unloaded, and its rotary embedding


@pytest.fixture
def llama(mttm_module, calls):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        initializer_range=0.3,  # attention large enough for rotary changes to show
    )
    torch.manual_seed(0)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = transformers.LlamaModel(config)

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).last_hidden_state

    model = Decoder().eval()
    mttm = mttm_module.MutableTorchTensorRTModule(model)
    ids = torch.randint(0, 256, (2, 8))
    with torch.no_grad():
        mttm(ids)
    calls.refit = 0
    calls.compile.clear()
    return model, mttm, ids


def test_peft_lora_fused_and_unloaded_refits(llama, calls):
    peft = pytest.importorskip("peft")
    model, mttm, ids = llama
    config = peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )

    def fuse_and_unload():
        peft.inject_adapter_in_model(config, mttm)
        for name, module in list(mttm.named_modules()):
            if isinstance(module, peft.tuners.lora.LoraLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(mttm.get_submodule(parent), child, module.get_base_layer())

    assert _outputs_move(model, ids, fuse_and_unload)
    with torch.no_grad():
        assert torch.allclose(mttm(ids), model(ids), atol=1e-5), "stale engine"
    assert calls.refit == 1 and not calls.compile


def test_rotary_inv_freq_change_recompiles(llama, calls):
    model, mttm, ids = llama
    assert "model.rotary_emb.inv_freq" not in model.state_dict()
    assert _outputs_move(
        model, ids, lambda: mttm.model.rotary_emb.inv_freq.mul_(0.25)
    )
    with torch.no_grad():
        assert torch.allclose(mttm(ids), model(ids), atol=1e-5), "stale engine"
    assert len(calls.compile) == 1 and calls.refit == 0
