"""Load a (patched) ``_MutableTorchTensorRTModule.py`` on the CPU with torch_tensorrt faked.

``torch_tensorrt`` cannot be imported without CUDA, and TensorRT is not installable here, so
the module file is executed on its own, with ``torch_tensorrt``'s other modules replaced by
small fakes: the "compiler" builds an engine that runs the exported graph on a copy of the
weights, the "refit" rebuilds it, and ``deallocate_module`` counts its calls (``Calls``).
"""

import importlib.machinery
import io
import sys
import tempfile
import types

import torch
from torch import nn

MTTM = "py/torch_tensorrt/dynamo/runtime/_MutableTorchTensorRTModule.py"
MODULE_NAME = "torch_tensorrt.dynamo.runtime._MutableTorchTensorRTModule"


class FakeEngine(nn.Module):
    """The "engine": the exported program serialized when it is built, so its weights are a copy
    that goes stale when the model's change and is not refitted. Picklable, as engines are."""

    def __init__(self, exported_program):
        super().__init__()
        buffer = io.BytesIO()
        torch.export.save(exported_program, buffer)
        self.blob = buffer.getvalue()

    def forward(self, *args, **kwargs):
        if "_loaded" not in self.__dict__:
            loaded = torch.export.load(io.BytesIO(self.blob)).module()
            object.__setattr__(self, "_loaded", loaded)
        return self.__dict__["_loaded"](*args, **kwargs)

    def __getstate__(self):
        return {k: v for k, v in super().__getstate__().items() if k != "_loaded"}


class Calls:
    def __init__(self):
        self.deallocate = 0
        self.compile = []  # settings passed to the compiler, one dict per compilation
        self.refit = 0


def install_fakes(monkeypatch, calls: Calls) -> None:
    def package(name, **attrs):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__path__ = []
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
        return module

    def engine(exported_program):
        return FakeEngine(exported_program)

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

    root = package("torch_tensorrt", runtime=types.SimpleNamespace())
    package("torch_tensorrt._Device", Device=type("Device", (), {}))
    # dtype._from(torch dtype).to(torch.dtype), as the refit in place converts engine weight dtypes
    dtype = type(
        "dtype",
        (),
        {"_from": staticmethod(lambda v: types.SimpleNamespace(to=lambda _: v))},
    )
    package("torch_tensorrt._enums", dtype=dtype)
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
    # Imported by the refit in place (patch 0005): the fake engines are neither, so every refit
    # takes the (fake) full path
    package(
        "torch_tensorrt.dynamo.runtime._PythonTorchTensorRTModule",
        PythonTorchTensorRTModule=type("PythonTorchTensorRTModule", (nn.Module,), {}),
    )
    package(
        "torch_tensorrt.dynamo.runtime._TorchTensorRTModule",
        TorchTensorRTModule=type("TorchTensorRTModule", (nn.Module,), {}),
    )
    package("torch_tensorrt.logging", TRT_LOGGER=None)
    package("tensorrt")


def load_mttm(monkeypatch, source: str, calls: Calls):
    install_fakes(monkeypatch, calls)
    module = types.ModuleType(MODULE_NAME)
    monkeypatch.setitem(
        sys.modules, MODULE_NAME, module
    )  # pickle looks classes up here
    # From a file, as a module is imported: Triton's kernels read their source through inspect
    path = tempfile.mkdtemp() + "/_MutableTorchTensorRTModule.py"
    with open(path, "w") as f:
        f.write(source)
    module.__file__ = path
    exec(compile(source, path, "exec"), module.__dict__)
    return module
