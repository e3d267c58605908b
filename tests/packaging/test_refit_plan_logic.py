"""Which tensors the refit in place (patch 0005) sets, and when the weight name maps are trusted.

``_in_place_refit_plan`` reads the exported graph and the engines' weight name maps. Here the
graph is a real ``torch.export`` of each model and the engines are stand-ins that carry a weight
name map written the way Torch-TensorRT's interpreter writes it (engine weight name ->
[state dict name, dtype]), so the rules run on the CPU for each release that has the patch.
"""

import pytest

torch = pytest.importorskip("torch")  # before mttm_harness, which imports torch

from conftest import VERSIONS  # noqa: E402
from mttm_harness import MTTM, Calls, load_mttm  # noqa: E402

nn = torch.nn
F = torch.nn.functional
WITH_0005 = [v for v in VERSIONS if v.startswith(("2.11.", "2.12."))]


@pytest.fixture(params=WITH_0005)
def module(request, monkeypatch, patched_trees):
    source = (patched_trees("torch_tensorrt", request.param) / MTTM).read_text()
    assert "_in_place_refit_plan" in source
    return load_mttm(monkeypatch, source, Calls())


def _plan(module, model, x, weight_name_map, pytorch_modules=None):
    """The plan for one engine with ``weight_name_map`` and, as the PyTorch-executed
    ``_run_on_gpu_1``, a graph module holding ``pytorch_modules`` (name -> module)."""
    exported = torch.export.export(model.eval(), (x,))
    gm = nn.Module()
    engine = module.PythonTorchTensorRTModule()
    engine.weight_name_map = weight_name_map
    gm._run_on_acc_0 = engine
    if pytorch_modules:
        gm._run_on_gpu_1 = torch.fx.GraphModule(nn.Module(), torch.fx.Graph())
        for name, submodule in pytorch_modules.items():
            gm._run_on_gpu_1.register_module(name, submodule)
    return module._in_place_refit_plan(gm, exported)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.fc(x))


def _linear_fc():
    """The engine weights of ``self.fc``, a Linear, named by their layer."""
    f32 = torch.float32
    return {
        "fc/linear_weight CONSTANT": ["fc.weight", f32],
        "fc/linear_bias CONSTANT": ["fc.bias", f32],
    }


def _block_map():
    f32 = torch.float32
    return {
        **_linear_fc(),
        "norm/layer_norm_weight CONSTANT": ["norm.weight", f32],
        "norm/layer_norm_bias CONSTANT": ["norm.bias", f32],
        "constant_mapping": {},
    }


def test_weights_named_by_their_layers_are_set_in_place(module):
    targets, reasons, untrusted = _plan(
        module, Block(), torch.randn(2, 8), _block_map()
    )
    assert set(targets) == {"fc.weight", "fc.bias", "norm.weight", "norm.bias"}
    assert targets["fc.weight"] == [
        ("_run_on_acc_0", "fc/linear_weight CONSTANT", torch.float32)
    ]
    assert not reasons and untrusted is None


def test_an_engine_weight_mapped_to_no_tensor_is_not_trusted(module):
    # A literal (the norm's eps) and a folded tensor whose equal-valued constant another engine
    # weight took in the value search look the same in the map: no tensor
    weight_name_map = _block_map()
    weight_name_map["norm/layer_norm_eps CONSTANT"] = ["", torch.float32]
    targets, reasons, untrusted = _plan(
        module, Block(), torch.randn(2, 8), weight_name_map
    )
    # The refit in place sets only weights named by their layers: it is not affected
    assert set(targets) == {"fc.weight", "fc.bias", "norm.weight", "norm.bias"}
    assert not reasons
    assert untrusted is not None and "is mapped to no tensor" in untrusted


def test_a_weight_paired_by_value_is_not_trusted(module):
    weight_name_map = _block_map()
    # The interpreter's value search paired the norm's weight with another layer's constant
    weight_name_map["fc/linear_weight CONSTANT"] = ["norm.weight", torch.float32]
    targets, reasons, untrusted = _plan(
        module, Block(), torch.randn(2, 8), weight_name_map
    )
    assert "norm.weight" in reasons and "by its values" in reasons["norm.weight"]
    assert "norm.weight" not in targets
    assert untrusted is not None and "norm.weight" in untrusted
    # fc.weight is named by no engine weight now: the maps would leave it stale
    assert "fc.weight" not in targets


class Folded(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) @ self.w.t()


def test_a_folded_weight_takes_the_full_refit(module):
    f32 = torch.float32
    weight_name_map = {
        **_linear_fc(),
        "/matmul_other CONSTANT": ["_frozen_param0", f32],
    }
    targets, reasons, untrusted = _plan(
        module, Folded(), torch.randn(2, 8), weight_name_map
    )
    assert "folded into a constant" in reasons["w"]
    assert set(targets) == {"fc.weight", "fc.bias"}
    # A folded constant is found by its values, and the search may pair it with another constant
    # of equal values: the full refit runs without the maps
    assert untrusted is not None and "'_frozen_param0' by its values" in untrusted


class SharedWithPyTorch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):  # (2, 4, 8)
        return self.conv(x) + (x.mean() * self.conv.weight).sum()


def test_a_tensor_of_a_pytorch_submodule_still_needs_an_engine_weight(module):
    # No engine weight names the kernel; the tensor is also read by an op that runs in PyTorch,
    # which must not count as a name
    bias = "[CONVOLUTION]-[aten_ops.convolution.default]-[conv/convolution] BIAS"
    targets, reasons, untrusted = _plan(
        module,
        SharedWithPyTorch(),
        torch.randn(2, 4, 8),
        {bias: ["conv.bias", torch.float32]},
        {"conv": nn.Conv1d(4, 4, 3, padding=1)},
    )
    assert "conv.weight" not in targets
    assert "PyTorch-executed _run_on_gpu_1" in reasons["conv.weight"]
    assert (
        untrusted
        == "conv.weight is read by the model's ops and named by no engine weight"
    )


class Alpha(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.delta = nn.Parameter(torch.zeros(8))

    def forward(self, x):
        return torch.add(self.fc(x), self.delta, alpha=2)


def test_add_with_alpha_is_not_set_in_place(module):
    f32 = torch.float32
    weight_name_map = {
        **_linear_fc(),
        "/add_other CONSTANT": ["delta", f32],
    }
    targets, reasons, untrusted = _plan(
        module, Alpha(), torch.randn(2, 8), weight_name_map
    )
    assert "alpha" in reasons["delta"] and "delta" not in targets
    assert untrusted is not None


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.fc(x))


def test_a_weight_used_twice_needs_an_engine_weight_per_use(module):
    f32 = torch.float32
    weight_name_map = {
        **_linear_fc(),
        "fc/linear_1_weight CONSTANT": ["", f32],
        "fc/linear_1_bias CONSTANT": ["fc.bias", f32],
    }
    targets, reasons, untrusted = _plan(
        module, Twice(), torch.randn(2, 8), weight_name_map
    )
    assert "used 2 times and named by 1" in reasons["fc.weight"]
    assert set(targets) == {"fc.bias"}
    assert untrusted is not None


def test_engines_without_a_weight_name_map_refit_nothing_in_place(module):
    targets, reasons, untrusted = _plan(module, Block(), torch.randn(2, 8), None)
    assert not targets
    assert set(reasons) >= {"fc.weight", "norm.weight"}


@pytest.mark.parametrize(
    "weight_name, expected",
    [
        ("layers.0.fc1/linear_2_weight CONSTANT", "layers.0.fc1.weight"),
        ("layers.0.fc1/linear_2_bias CONSTANT", "layers.0.fc1.bias"),
        (
            "[CONVOLUTION]-[aten_ops.convolution.default]-[layer4.0.conv2/convolution_16] KERNEL",
            "layer4.0.conv2.weight",
        ),
        (
            "[CONVOLUTION]-[aten_ops.convolution.default]-[layer4.0.conv2/convolution_16] BIAS",
            "layer4.0.conv2.bias",
        ),
        (
            "lm.model.embed_tokens/embedding_embedding_tensor CONSTANT",
            "lm.model.embed_tokens.weight",
        ),
        ("bn1/_native_batch_norm_legit_no_training_eps CONSTANT", None),
        ("/add_rhs CONSTANT", None),
    ],
)
def test_the_tensor_a_layer_names(module, weight_name, expected):
    assert module._tensor_named_by_layer(weight_name) == expected
