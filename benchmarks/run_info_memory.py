"""Device memory a MutableTorchTensorRTModule holds after a call, with the caller's output dropped.

Released Torch-TensorRT keeps the last inputs and outputs of every call (``run_info``) to decide
about refits by running the model again; the patched module decides from the weights and keeps
neither. A model with a large output (an fp16 projection of 2048 tokens to a 32000-word
vocabulary: 125 MiB) shows the difference:

    PYTHONPATH=SITE_OF_BUILD:SITE_OF_TENSORRT python benchmarks/run_info_memory.py
"""

import gc

import torch
import torch_tensorrt


def main() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4096, 32000)).eval().half().cuda()
    x = torch.randn(1, 2048, 4096, device="cuda", dtype=torch.float16)
    mttm = torch_tensorrt.MutableTorchTensorRTModule(
        model, min_block_size=1, use_explicit_typing=True
    )
    with torch.no_grad():
        out = mttm(x)
    output_mib = out.numel() * out.element_size() / 2**20
    del out
    gc.collect()
    torch.cuda.synchronize()
    print(
        f"torch_tensorrt {torch_tensorrt.__version__}: output {output_mib:.0f} MiB; "
        f"last inputs and outputs kept: {'run_info' in mttm.__dict__}; "
        f"allocated after the call: {torch.cuda.memory_allocated() / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
