"""Load a (patched) ``_MutableTorchTensorRTModule.py`` on the CPU with torch_tensorrt faked.

``torch_tensorrt`` cannot be imported without CUDA, and TensorRT is not installable here, so
the module file is executed on its own, with ``torch_tensorrt``'s other modules replaced by
small fakes: the "compiler" builds a ``FakeEngine`` that holds a copy of the weights, the
"refit" rebuilds it, and ``deallocate_module`` counts its calls (``Calls``).
"""

import sys
import types

import torch
from torch import nn

MTTM = "py/torch_tensorrt/dynamo/runtime/_MutableTorchTensorRTModule.py"
MODULE_NAME = "torch_tensorrt.dynamo.runtime._MutableTorchTensorRTModule"


class FakeEngine(nn.Module):
    """Stands in for a TensorRT engine of ``Net``: its forward on weights copied when built."""

    def __init__(self, state_dict):
        super().__init__()
        self.register_buffer("w", state_dict["fc.weight"].detach().clone())
        self.register_buffer("b", state_dict["fc.bias"].detach().clone())

    def forward(self, x):
        return nn.functional.linear(x, self.w, self.b).relu()


class Calls:
    def __init__(self):
        self.deallocate = 0
        self.compile = []  # settings passed to the compiler, one dict per compilation
        self.refit = 0


def install_fakes(monkeypatch, calls: Calls) -> None:
    def package(name, **attrs):
        module = types.ModuleType(name)
        module.__path__ = []
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    def engine(exported_program):
        return FakeEngine(exported_program.state_dict)

    def fake_compile(exported_program, arg_inputs=(), kwarg_inputs=None, **settings):
        calls.compile.append(settings)
        return engine(exported_program)

    def fake_refit(gm, exported_program, arg_inputs=(), kwarg_inputs=None, **_):
        calls.refit += 1
        return engine(exported_program)

    def fake_deallocate(module, *_, **__):
        calls.deallocate += 1
        module.to("cpu")

    def check_output_equal(a, b):
        return torch.allclose(a, b, rtol=5e-3, atol=5e-3)

    # torch_tensorrt depends on psutil; the patched refit decision asks it for free host memory
    package(
        "psutil",
        virtual_memory=lambda: types.SimpleNamespace(available=1 << 34),
    )
    root = package("torch_tensorrt", runtime=types.SimpleNamespace())
    package("torch_tensorrt._Device", Device=type("Device", (), {}))
    package("torch_tensorrt._enums", dtype=type("dtype", (), {}))
    defaults = package(
        "torch_tensorrt.dynamo._defaults",
        DEVICE=None,
        OFFLOAD_MODULE_TO_CPU=False,
        USE_PYTHON_RUNTIME=False,
        ENABLED_PRECISIONS=set(),
    )
    dynamo = package("torch_tensorrt.dynamo", _defaults=defaults)
    root.dynamo = dynamo
    package("torch_tensorrt.dynamo._compiler", compile=fake_compile)
    package("torch_tensorrt.dynamo._refit", refit_module_weights=fake_refit)
    package(
        "torch_tensorrt.dynamo.utils",
        check_output_equal=check_output_equal,
        deallocate_module=fake_deallocate,
        to_torch_device=lambda device: torch.device("cpu"),
        to_torch_tensorrt_device=lambda device: device,
    )
    package("torch_tensorrt.dynamo.runtime")


def load_mttm(monkeypatch, source: str, calls: Calls):
    install_fakes(monkeypatch, calls)
    module = types.ModuleType(MODULE_NAME)
    monkeypatch.setitem(
        sys.modules, MODULE_NAME, module
    )  # pickle looks classes up here
    exec(compile(source, MODULE_NAME, "exec"), module.__dict__)
    return module
