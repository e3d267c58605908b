"""What the weights' fingerprints of MutableTorchTensorRTModule's refit decision cost, on one GPU.

    python benchmarks/fingerprint_cost.py [--table-rows 142822] [--hidden 2048] [--tensors 16]

Builds fp16 weights like the benchmark's 750 MiB model (an embedding table and square
matrices) and prints the median time of: the fingerprints on the GPU (the Triton kernel),
without Triton (cuBLASLt's integer product), on the CPU (weights offloaded), the CPU weights
copied to the GPU and fingerprinted there, and the Triton kernel alone on the table, next to a
device-to-device copy of the same bytes. It checks that every route gives the same
fingerprints. Needs a patched Torch-TensorRT (patch 0004) on the path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List, Optional, Sequence


def _median_ms(fn: Callable[[], object], calls: int) -> float:
    import torch

    fn()  # warm-up: Triton compiles its kernel once per machine
    torch.cuda.synchronize()
    times: List[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-rows", type=int, default=142822)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--tensors", type=int, default=16)
    parser.add_argument("--calls", type=int, default=7)
    args = parser.parse_args(argv)

    import torch
    from torch_tensorrt.dynamo.runtime import _MutableTorchTensorRTModule as m

    if not hasattr(m, "_weight_fingerprints"):
        parser.error("this Torch-TensorRT has no content fingerprints (patch 0004)")
    device = torch.device("cuda:0")
    torch.manual_seed(0)
    model = torch.nn.Module()
    h = args.hidden
    model.table = torch.nn.Parameter(
        torch.randn(args.table_rows, h, dtype=torch.float16, device=device)
    )
    for i in range(args.tensors):
        weight = torch.randn(h, h, dtype=torch.float16, device=device)
        setattr(model, f"w{i}", torch.nn.Parameter(weight))
    tensors = m._weight_tensors(model)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    on_cpu = {k: v.detach().cpu() for k, v in tensors.items()}
    reference = m._weight_fingerprints(tensors)
    figures = {}
    figures["GPU, Triton"] = _median_ms(
        lambda: m._weight_fingerprints(tensors), args.calls
    )
    figures["CPU (offloaded weights)"] = _median_ms(
        lambda: m._weight_fingerprints(on_cpu), 3
    )
    figures["CPU weights copied to the GPU, then fingerprinted"] = _median_ms(
        lambda: m._weight_fingerprints(
            {k: v.to(device) for k, v in on_cpu.items()}
        ),
        3,
    )
    same = m._weight_fingerprints(on_cpu) == reference
    if m.triton is not None:
        triton, m.triton = m.triton, None
        try:
            figures["GPU, cuBLASLt (no Triton)"] = _median_ms(
                lambda: m._weight_fingerprints(tensors), 3
            )
            same = same and m._weight_fingerprints(tensors) == reference
        finally:
            m.triton = triton
        table = model.table.detach().reshape(-1).view(torch.int8)
        rows = table[: table.numel() // m._FINGERPRINT_ROW * m._FINGERPRINT_ROW]
        rows = rows.view(-1, m._FINGERPRINT_ROW)
        figures["Triton kernel alone, the table"] = _median_ms(
            lambda: m._hash_rows(rows, 0), args.calls
        )
        figures["device-to-device copy of the table"] = _median_ms(
            rows.clone, args.calls
        )
    print(
        f"{len(tensors)} tensors, {size / 2**20:.0f} MiB, {torch.cuda.get_device_name(0)}"
    )
    for name, ms in figures.items():
        print(f"| {name} | {ms:.2f} ms |")
    print("every route gives the same fingerprints:", same)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
