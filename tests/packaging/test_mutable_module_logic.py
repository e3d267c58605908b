"""MutableTorchTensorRTModule's lifecycle logic, run on the CPU with the compiler faked.

``torch_tensorrt`` cannot be imported without CUDA, and TensorRT is not installable here. The
patched ``_MutableTorchTensorRTModule.py`` of each release is therefore loaded on its own, with
``torch_tensorrt``'s other modules replaced by small fakes (``mttm_harness``): the "engine" is
PyTorch on the CPU holding a copy of the weights, the "refit" rebuilds it from the exported
program, and ``deallocate_module`` records its calls. What this covers: which lifecycle
paths offload, what reaches the compiler, save/load of the setting, the refit decision's state
flow. What it cannot: real devices (everything is on the CPU) and TensorRT; the GPU suite does.
"""

import logging
import os

import pytest

torch = pytest.importorskip("torch")  # before mttm_harness, which imports torch

from conftest import base_wheel  # noqa: E402
from mttm_harness import MTTM, load_mttm  # noqa: E402

nn = torch.nn

@pytest.fixture
def unpatched_module(monkeypatch, version, calls):
    import zipfile

    with zipfile.ZipFile(base_wheel("torch_tensorrt", version)) as zf:
        source = zf.read(MTTM[len("py/") :]).decode()
    return load_mttm(monkeypatch, source, calls)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(100, 16)
        self.fc = nn.Linear(16, 16)

    def get_input_embeddings(self):
        return self.embed_tokens

    def forward(self, x):
        return self.fc(x).relu()


def _x():
    return torch.randn(2, 4, 16)


def _lifecycle(module_cls, model, tmp_path, **settings):
    """First call, attribute assignment, weight change, load_state_dict, save/load."""
    mttm = module_cls(model, **settings)
    x = _x()
    with torch.no_grad():
        mttm(x)
        mttm.generation_mode = "greedy"
        mttm(x)
        mttm.fc.weight.mul_(1.5)
        mttm(x)
        mttm.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})
        out = mttm(x)
        assert torch.allclose(out, model(x))
    path = os.path.join(tmp_path, "m.pkl")
    module_cls.save(mttm, path)
    loaded = module_cls.load(path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), loaded.original_model(x))
    return mttm, loaded


@pytest.mark.parametrize(
    "settings", [{}, {"offload_module_to_cpu": False}], ids=["default", "false"]
)
def test_no_lifecycle_path_offloads_unless_asked(
    mttm_module, calls, tmp_path, settings
):
    mttm, loaded = _lifecycle(
        mttm_module.MutableTorchTensorRTModule, Net().eval(), tmp_path, **settings
    )
    assert calls.deallocate == 0
    assert calls.compile and all(
        s["offload_module_to_cpu"] is False for s in calls.compile
    )
    assert mttm.offload_module_to_cpu is False and loaded.offload_module_to_cpu is False


def test_unpatched_release_offloads_without_being_asked(
    unpatched_module, calls, tmp_path
):
    """The harness sees the bug: the released module offloads on refit, check and load."""
    _lifecycle(unpatched_module.MutableTorchTensorRTModule, Net().eval(), tmp_path)
    assert calls.deallocate >= 3


def test_offload_on_offloads_on_every_path_and_survives_save_load(
    mttm_module, calls, tmp_path
):
    mttm, loaded = _lifecycle(
        mttm_module.MutableTorchTensorRTModule,
        Net().eval(),
        tmp_path,
        offload_module_to_cpu=True,
    )
    assert all(s["offload_module_to_cpu"] is True for s in calls.compile)
    # compile, the refit after the weight change, the refit after load_state_dict, and load
    # (the refit check decides from the weights and moves nothing)
    assert calls.deallocate >= 4
    assert loaded.offload_module_to_cpu is True


@pytest.mark.parametrize("legacy", [None, True], ids=["unset", "offload-true"])
def test_module_saved_by_an_earlier_release_loads_its_setting(
    mttm_module, calls, tmp_path, legacy
):
    cls = mttm_module.MutableTorchTensorRTModule
    mttm = cls(Net().eval())
    with torch.no_grad():
        mttm(_x())
    del mttm.__dict__["offload_module_to_cpu"]  # as an unpatched release pickles it
    if legacy is not None:
        mttm.additional_settings["offload_module_to_cpu"] = legacy
    path = os.path.join(tmp_path, "m.pkl")
    cls.save(mttm, path)
    loaded = cls.load(path)
    assert loaded.offload_module_to_cpu is bool(legacy)
    assert "offload_module_to_cpu" not in loaded.additional_settings


def test_to_says_nothing_of_offloading_when_it_is_off(mttm_module, calls, caplog):
    mttm = mttm_module.MutableTorchTensorRTModule(Net().eval())
    with caplog.at_level(logging.WARNING):
        mttm.to("cpu")
    messages = [r.getMessage() for r in caplog.records]
    assert messages and not any("offloading" in m.lower() for m in messages)


# ------------------------------------------------------------------------------------------
# keep_on_device (0003) and the refit decision from the weights (0004)


def test_keep_on_device_is_checked_when_the_module_is_created(mttm_module):
    cls = mttm_module.MutableTorchTensorRTModule
    with pytest.raises(ValueError, match="closest names: embed_tokens"):
        cls(Net().eval(), offload_module_to_cpu=True, keep_on_device="embed_token")
    mttm = cls(Net().eval(), offload_module_to_cpu=True, keep_on_device="embed_*")
    assert mttm.keep_on_device == ("embed_*",)

    check = cls._check_keep_on_device
    model = nn.Module()
    model.model = nn.Module()
    model.model.embed_tokens = nn.Embedding(10, 4)
    model.model.layers = nn.ModuleList([nn.Linear(4, 4)] * 2)
    model.lm_head = nn.Linear(4, 10)
    assert check(model, "lm_head") == ("lm_head",)
    assert check(model, ["model.embed_tokens", "model.layers.*"]) == (
        "model.embed_tokens",
        "model.layers.*",
    )
    with pytest.raises(ValueError) as error:
        check(model, ("model.embed_token",))
    assert "'model.embed_token' matches no submodule" in str(error.value)
    assert "closest names: model.embed_tokens" in str(error.value)
    with pytest.raises(ValueError):
        check(model, ("decoder.*",))


def test_keep_on_device_defaults_to_nothing_and_is_saved(mttm_module, calls, tmp_path):
    mttm, loaded = _lifecycle(mttm_module.MutableTorchTensorRTModule, Net(), tmp_path)
    assert calls.deallocate == 0
    assert loaded.keep_on_device == ()


def test_decision_neither_runs_the_model_nor_refits_for_attributes(mttm_module, calls):
    model = Net().eval()
    runs = []
    mttm = mttm_module.MutableTorchTensorRTModule(model)
    x = _x()
    with torch.no_grad():
        mttm(x)
        model.register_forward_hook(lambda *a: runs.append(1))
        for i in range(3):
            mttm.generation_step = i
            mttm(x)
            _ = mttm.fc.weight.sum()  # a read through the module
            mttm(x)
    assert runs == [] and calls.refit == 0 and len(calls.compile) == 1

    with torch.no_grad():
        mttm.fc.weight.data.copy_(model.fc.weight * 2)  # bypasses the version counter
        out = mttm(x)
    assert calls.refit == 1 and torch.allclose(out, model(x))

    with torch.no_grad():
        mttm.adapter = nn.Linear(16, 16)  # new keys: recompile
        mttm(x)
    assert len(calls.compile) == 2
    assert runs == [1], "only the reference call of this test ran the model"
