"""pytest plugin: import torch_tensorrt before any test module is collected.

Upstream's test files say ``import tensorrt as trt`` before ``import torch_tensorrt``. With a
TensorRT-RTX build only ``tensorrt_rtx`` is installed, and ``tensorrt`` exists once
torch_tensorrt has put its proxy module in its place; ci/gpu-regression loads this plugin
(``-p pytest_torchtrt_first``) for upstream's files, against both builds alike.
"""

import torch_tensorrt  # noqa: F401
