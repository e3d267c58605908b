"""Benchmark MutableTorchTensorRTModule lifecycle paths: released vs patched Torch-TensorRT.

One command on one GPU. Each (model size, offload setting, build) case runs in its own process,
with the builds alternating, so both see the same machine state:

    python benchmarks/bench_mttm.py \\
        --build upstream=/tmp/gpu-torchtrt/2.11.0 \\
        --build patched=/tmp/gpu-torchtrt/2.11.0+offload.94fe8c8a \\
        --extra-path /tmp/gpu-site --sizes 100 750 3072 --json bench.json

``--build NAME=DIR`` puts DIR (a site directory holding ``torch_tensorrt``) first on the
worker's PYTHONPATH; ``--extra-path`` follows it (TensorRT and helpers). The first build is the
baseline of the ratio column. Models are decoder-style fp16 language models whose weights are
mostly the embedding table, sized to ``--sizes`` MiB.

Figures per case: compile time (first call); forward latency (median of ``--iters`` calls after
warm-up); the call after an attribute assignment; the call after reading a weight without
changing it, the call after an in-place write of equal values, and how many refits those calls
caused (none is right: no weight changed); what fingerprinting the weights and the decision
cost on builds that decide from the weights' contents; the
call after a real weight change (refit); save and load time (C++ runtime); device memory in use
after compile and after the refit (``torch.cuda.mem_get_info`` less the caching allocator's
free bytes, relative to before the model was created, so the user's weights count while they
are on the device), the engines' serialized size and PyTorch's allocator peak. Two figures
separate the patch's own cost from the run-to-run noise of a whole compile or forward: the
compiled graph module called without the wrapper, and the time ``_store_state_dict_metadata``
takes (what compile() and every refit spend recording the weights).

``--processes N`` runs every case N times per build, alternating the builds; ``--forward-only``
stops each worker after compile and forward. ``--worker-timeout S`` bounds one worker; a
stopped worker keeps the figures it printed. ``--json`` is rewritten after every worker.

``--decision-seeds N`` instead compiles the model of the first ``--sizes`` entry with seeds
0..N-1 and counts the refits that attribute assignments and weight reads cause (false refits:
the released decision compares engine and PyTorch outputs with rtol/atol 5e-3).

``--memory-breakdown`` instead splits the device memory after compile and after a refit of the
first ``--sizes`` model: the runtime's fixed cost (a one-layer model compiled first), PyTorch
tensors by owner (user model, compiled graph module, exported program, hand-out copies,
inputs; the largest unowned ones with what refers to them), the rest outside PyTorch, the
engines' serialized size and their execution contexts' activation memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
)

if TYPE_CHECKING:  # the orchestrator runs without torch; only workers import it
    import torch

MIB = 1 << 20
FP16_BYTES = 2
SEQ = 128
WORKER_TIMEOUT_S = 420  # one case; a hung worker must not take the whole run with it
# (hidden, blocks) per size class: blocks are ~12·hidden² parameters each
SHAPES = ((4096, 2), (2048, 2), (1024, 2), (1024, 1))


@dataclass(frozen=True)
class ModelDims:
    vocab: int
    hidden: int
    blocks: int

    @property
    def parameters(self) -> int:
        per_block = 12 * self.hidden * self.hidden + 13 * self.hidden
        return self.vocab * self.hidden + self.blocks * per_block + 2 * self.hidden

    @property
    def bytes(self) -> int:
        return self.parameters * FP16_BYTES


def model_dims(target_mib: float) -> ModelDims:
    """Dimensions of an fp16 model of about ``target_mib`` MiB, most of it the embedding."""
    target = target_mib * MIB
    for hidden, blocks in SHAPES:
        block_bytes = blocks * (12 * hidden * hidden + 13 * hidden) * FP16_BYTES
        # Keep the embedding at least two thirds of the model
        if block_bytes <= target / 3:
            vocab = int((target - block_bytes) / (hidden * FP16_BYTES))
            return ModelDims(vocab=vocab, hidden=hidden, blocks=blocks)
    raise ValueError(f"{target_mib} MiB is too small for these model shapes")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=SITE_DIR",
        help="a Torch-TensorRT build to measure; the first is the baseline",
    )
    parser.add_argument(
        "--extra-path", default="", help="appended to each worker's PYTHONPATH"
    )
    parser.add_argument(
        "--sizes", type=float, nargs="+", default=[100.0, 750.0, 3072.0]
    )
    parser.add_argument(
        "--offload", nargs="+", choices=("off", "on"), default=["off", "on"]
    )
    parser.add_argument("--iters", type=int, default=50, help="timed forward calls")
    parser.add_argument("--repeats", type=int, default=5, help="timed lifecycle calls")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="worker processes per build and case, alternating builds; the table shows "
        "the median over them and their range",
    )
    parser.add_argument(
        "--forward-only",
        action="store_true",
        help="measure compile and forward only (for --processes runs)",
    )
    parser.add_argument(
        "--worker-timeout",
        type=float,
        default=WORKER_TIMEOUT_S,
        metavar="S",
        help="seconds one worker may run; a stopped worker keeps the figures it printed",
    )
    parser.add_argument(
        "--decision-seeds",
        type=int,
        default=0,
        metavar="N",
        help="instead: count false refits over seeds 0..N-1 (model of the first size)",
    )
    parser.add_argument(
        "--memory-breakdown",
        action="store_true",
        help="instead: split device memory after compile and after refit into the runtime's "
        "fixed cost, engine weights, engine activations, PyTorch tensors by owner and the rest "
        "(model of the first size)",
    )
    parser.add_argument(
        "--aligned-lookup",
        action="store_true",
        help="instead: time an embedding lookup of an offloaded table with CUDA ids "
        "(batch 8 x 512 tokens, vocab 128k, hidden 2048, fp16) against the same lookup on "
        "the GPU; needs the aligned calls of patch 0003",
    )
    parser.add_argument(
        "--refit-costs",
        action="store_true",
        help="instead: for each size, offload setting and runtime (--runtimes), time the call "
        "after one weight, a rank-16 LoRA delta in 8 linear weights and every weight changed "
        "(--repeats each, median), say which refit ran, break its time down by step, and "
        "measure device memory and host peak RSS over --refits consecutive refits",
    )
    parser.add_argument(
        "--runtimes", nargs="+", choices=("python", "cpp"), default=["python", "cpp"]
    )
    parser.add_argument(
        "--refits",
        type=int,
        default=0,
        help="with --refit-costs: refits for the memory check",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker:
        builds = []
        for spec in args.build:
            name, sep, site = spec.partition("=")
            if not sep or not name or not site:
                parser.error(f"--build takes NAME=SITE_DIR, got {spec!r}")
            if not os.path.isfile(os.path.join(site, "torch_tensorrt", "__init__.py")):
                parser.error(f"--build {spec}: {site} holds no torch_tensorrt package")
            builds.append((name, site))
        if len(builds) < 1:
            parser.error("give at least one --build NAME=SITE_DIR")
        args.builds = builds
    modes = [
        flag
        for flag, on in (
            ("--refit-costs", args.refit_costs),
            ("--aligned-lookup", args.aligned_lookup),
            ("--memory-breakdown", args.memory_breakdown),
            ("--decision-seeds", args.decision_seeds > 0),
        )
        if on
    ]
    if len(modes) > 1:
        parser.error(f"choose one of {', '.join(modes)}")
    if modes and not args.worker and (args.processes != 1 or args.forward_only):
        parser.error(
            f"--processes and --forward-only apply to the lifecycle tables, not {modes[0]}"
        )
    if not args.refit_costs and (args.refits or args.runtimes != ["python", "cpp"]):
        if not args.worker:
            parser.error("--refits and --runtimes apply to --refit-costs only")
    if args.refits < 0:
        parser.error("--refits must not be negative")
    if (
        args.iters < 1
        or args.repeats < 1
        or args.processes < 1
        or args.worker_timeout <= 0
        or args.decision_seeds < 0
    ):
        parser.error(
            "--iters, --repeats, --processes and --worker-timeout must be positive, "
            "--decision-seeds not negative"
        )
    return args


# --------------------------------------------------------------------------------------------
# Worker: one build, one size, one offload setting, in its own process


def _language_model(dims: ModelDims, seed: int) -> "torch.nn.Module":
    """An fp16 decoder-style model on the GPU whose forward takes ``inputs_embeds``."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, h: int) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(h), nn.LayerNorm(h)
            self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
            self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
            a = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
            x = x + self.proj(a @ v)
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))

    class LanguageModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(dims.vocab, dims.hidden)
            self.layers = nn.ModuleList(Block(dims.hidden) for _ in range(dims.blocks))
            self.norm = nn.LayerNorm(dims.hidden)

        def get_input_embeddings(self) -> nn.Embedding:
            return self.embed_tokens

        def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
            x = inputs_embeds
            for layer in self.layers:
                x = layer(x)
            return self.norm(x)

    # MutableTorchTensorRTModule.save pickles the model: its classes must be found by name
    for cls in (Block, LanguageModel):
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    torch.manual_seed(seed)
    # Random initialisation of GiBs of weights runs on the GPU, not the CPU
    with torch.device("cuda:0"):
        return LanguageModel().eval().half()


def _mutable_module(model: "torch.nn.Module", offload: bool, **options: Any) -> Any:
    import dataclasses

    import torch_tensorrt
    from torch_tensorrt.dynamo._settings import CompilationSettings

    settings = {f.name for f in dataclasses.fields(CompilationSettings)}
    # fp16 weights, fp16 engine; newer releases are always strongly typed and lack the field
    typing = {"use_explicit_typing": True} if "use_explicit_typing" in settings else {}
    return torch_tensorrt.MutableTorchTensorRTModule(
        model, min_block_size=1, offload_module_to_cpu=offload, **typing, **options
    )


def _serialized_engines(mttm: Any) -> List[bytes]:
    """The serialized TensorRT engines of the compiled graph module."""
    return [
        m.serialized_engine
        for m in mttm.gm.modules()
        if getattr(m, "serialized_engine", None)
    ]


def _count_refits() -> Dict[str, int]:
    """Counts MutableTorchTensorRTModule.refit_gm calls from now on, in this process."""
    import torch_tensorrt

    counts = {"refits": 0}
    cls = torch_tensorrt.MutableTorchTensorRTModule
    refit = cls.refit_gm

    def counting_refit(self: object) -> None:
        counts["refits"] += 1
        refit(self)

    cls.refit_gm = counting_refit
    return counts


_WORKER_START = time.perf_counter()


def _progress(result: Dict[str, Any]) -> None:
    """Print the figures so far: the orchestrator keeps them if the worker runs out of time."""
    result["worker_s"] = round(time.perf_counter() - _WORKER_START, 1)
    print(json.dumps(result), flush=True)


def _device_memory_in_use() -> int:
    """Bytes in use on the device: everything the driver counts less the allocator's free cache."""
    import gc

    import torch

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return total - free - (torch.cuda.memory_reserved() - torch.cuda.memory_allocated())


def _timed_ms(fn: Callable[[], object]) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def _median_ms(fn: Callable[[], object], calls: int) -> float:
    return statistics.median(_timed_ms(fn) for _ in range(calls))


def run_case(
    size_mib: float, offload: bool, iters: int, repeats: int, forward_only: bool
) -> Dict[str, object]:
    import tempfile

    import torch
    import torch_tensorrt

    dims = model_dims(size_mib)
    refits = _count_refits()

    used = _device_memory_in_use
    base = used()  # before the model exists: its weights count while on the device
    model = _language_model(dims, seed=0)
    ids = torch.randint(0, dims.vocab, (1, SEQ), device="cuda:0")
    with torch.no_grad():
        x = model.embed_tokens(ids)
    result: Dict[str, object] = {"model_mib": dims.bytes / MIB}
    result["mem_before_compile_mib"] = (used() - base) / MIB
    torch.cuda.reset_peak_memory_stats()
    mttm = _mutable_module(model, offload)
    with torch.no_grad():
        result["compile_s"] = _timed_ms(lambda: mttm(x)) / 1e3
        result["mem_after_compile_mib"] = (used() - base) / MIB
        result["engine_mib"] = sum(map(len, _serialized_engines(mttm))) / MIB
        for _ in range(10):
            mttm(x)
        result["forward_ms"] = _median_ms(lambda: mttm(x), iters)
        # The compiled graph module without the wrapper: the difference is the wrapper's cost
        result["gm_forward_ms"] = _median_ms(lambda: mttm.gm(x), iters)
        # What compile() and every refit spend recording the weights (patch 0004 adds to it)
        result["state_record_ms"] = _median_ms(mttm._store_state_dict_metadata, repeats)
        _progress(result)
        if forward_only:
            return result

        attribute, touch = [], []
        refits_before = refits["refits"]
        for i in range(repeats):
            mttm.bench_step = i
            attribute.append(_timed_ms(lambda: mttm(x)))
            _ = mttm.layers[0].fc1.weight  # a read through the wrapper, no change
            touch.append(_timed_ms(lambda: mttm(x)))
        result["after_attribute_ms"] = statistics.median(attribute)
        result["after_weight_read_ms"] = statistics.median(touch)
        equal = []
        for _ in range(repeats):
            mttm.layers[0].fc1.weight.mul_(1.0)  # an in-place write of equal values
            equal.append(_timed_ms(lambda: mttm(x)))
        result["after_equal_write_ms"] = statistics.median(equal)
        result["false_refits"] = refits["refits"] - refits_before
        _progress(result)
        if hasattr(mttm, "_record_weights"):  # the decision from the weights' contents
            from torch_tensorrt.dynamo.runtime import _MutableTorchTensorRTModule as m

            result["record_weights_ms"] = _median_ms(mttm._record_weights, repeats)
            result["decision_ms"] = _median_ms(mttm.update_refit_condition, repeats)
            # Fingerprints alone, where the weights are (the CPU with offloading on)
            tensors = m._weight_tensors(mttm.original_model)
            result["fingerprints_ms"] = _median_ms(
                lambda: m._weight_fingerprints(tensors), repeats
            )
            _progress(result)

        mttm.layers[0].fc1.weight.mul_(1.01)  # a real change: refit
        result["refit_ms"] = _timed_ms(lambda: mttm(x))
        result["mem_after_refit_mib"] = (used() - base) / MIB
        result["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
        result["model_on"] = str(next(model.parameters()).device)
        _progress(result)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mutable.pkl")
        cls = torch_tensorrt.MutableTorchTensorRTModule
        try:  # a failure here must not lose the figures above
            result["save_s"] = _timed_ms(lambda: cls.save(mttm, path)) / 1e3
            result["load_s"] = _timed_ms(lambda: cls.load(path)) / 1e3
        except Exception as e:
            result["save_load_error"] = f"{type(e).__name__}: {e}"[:300]
    return result


def run_decision_seeds(
    size_mib: float, offload: bool, seeds: int, repeats: int
) -> Dict[str, object]:
    """Refits caused by attribute assignments and weight reads, for each seed."""
    import torch

    dims = model_dims(size_mib)
    refits = _count_refits()
    per_seed: List[int] = []
    calls: List[float] = []
    for seed in range(seeds):
        model = _language_model(dims, seed)
        with torch.no_grad():
            x = model.embed_tokens(
                torch.randint(0, dims.vocab, (1, SEQ), device="cuda")
            )
            mttm = _mutable_module(model, offload)
            mttm(x)
            before = refits["refits"]
            for i in range(repeats):
                mttm.bench_step = i
                calls.append(_timed_ms(lambda: mttm(x)))
                _ = mttm.layers[0].fc1.weight
                calls.append(_timed_ms(lambda: mttm(x)))
            per_seed.append(refits["refits"] - before)
        mttm = model = x = None  # free this seed's model and engine before the next
        torch.cuda.empty_cache()
    return {
        "model_mib": dims.bytes / MIB,
        "false_refits_per_seed": per_seed,
        "call_median_ms": statistics.median(calls),
        "call_max_ms": max(calls),
    }


def _cuda_tensors_by_owner(
    owners: Dict[str, Iterable["torch.Tensor"]],
) -> Dict[str, Any]:
    """MiB of live CUDA tensor storages, by the first owner in ``owners`` that holds them.

    Storages nobody in ``owners`` holds are listed (largest first) with what refers to them.
    """
    import gc

    import torch

    storages: Dict[int, Tuple[int, "torch.Tensor"]] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.is_cuda:
                storage = obj.untyped_storage()
                storages.setdefault(storage.data_ptr(), (storage.nbytes(), obj))
        except Exception:  # objects that only look like tensors
            continue
    owner_of: Dict[int, str] = {}
    for owner, tensors in owners.items():
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_cuda:
                owner_of.setdefault(t.untyped_storage().data_ptr(), owner)
    by_owner: Dict[str, float] = {}
    unowned = []
    for ptr, (nbytes, t) in storages.items():
        owner = owner_of.get(ptr, "nobody listed")
        by_owner[owner] = by_owner.get(owner, 0.0) + nbytes / MIB
        if owner == "nobody listed":
            unowned.append((nbytes, t))
    unowned.sort(key=lambda item: -item[0])
    largest = []
    for nbytes, t in unowned[:5]:
        referrers = []
        for r in gc.get_referrers(t):
            if isinstance(r, dict):
                keys = [k for k, v in r.items() if v is t][:2]
                referrers.append(f"dict[{', '.join(map(str, keys))}]")
            elif r is not unowned and not isinstance(r, tuple):
                referrers.append(type(r).__qualname__)
        largest.append(
            {
                "mib": round(nbytes / MIB, 2),
                "shape": list(t.shape),
                "dtype": str(t.dtype),
                "referred_by": referrers[:4],
            }
        )
    return {
        "by_owner_mib": {k: round(v, 2) for k, v in by_owner.items()},
        "largest_unlisted": largest,
    }


def run_memory_breakdown(size_mib: float, offload: bool) -> Dict[str, object]:
    """Where the device memory of a compiled (and refitted) model goes, in MiB."""
    import itertools

    import torch
    import torch_tensorrt  # noqa: F401  (TensorRT-RTX builds make tensorrt_rtx importable as tensorrt)
    from torch import nn

    import tensorrt

    used = _device_memory_in_use
    result: Dict[str, object] = {}
    base = used()
    # The runtime's fixed cost: a one-layer model compiled and freed again
    tiny = nn.Linear(8, 8).cuda().eval().half()
    with torch.no_grad():
        tiny_x = torch.randn(2, 8, device="cuda:0", dtype=torch.half)
        tiny_mttm = _mutable_module(tiny, offload)
        tiny_mttm(tiny_x)
        result["runtime_with_tiny_engine_mib"] = (used() - base) / MIB
    tiny = tiny_x = tiny_mttm = None
    base_runtime = used()
    allocated_at_base = torch.cuda.memory_allocated() / MIB
    result["runtime_after_tiny_freed_mib"] = (base_runtime - base) / MIB

    dims = model_dims(size_mib)
    model = _language_model(dims, seed=0)
    ids = torch.randint(0, dims.vocab, (1, SEQ), device="cuda:0")
    with torch.no_grad():
        x = model.embed_tokens(ids)
    result["model_mib"] = dims.bytes / MIB
    mttm = _mutable_module(model, offload)

    def snapshot(stage: str) -> None:
        engines = _serialized_engines(mttm)
        exported = mttm.exp_program
        handed_out = getattr(mttm.refit_state, "handed_out", {})
        in_use = (used() - base_runtime) / MIB  # collects garbage before the scan
        owned = _cuda_tensors_by_owner(
            {
                "user model": model.state_dict(keep_vars=True).values(),
                "compiled graph module": itertools.chain(
                    mttm.gm.parameters(), mttm.gm.buffers()
                ),
                "exported program": (
                    itertools.chain(
                        exported.state_dict.values(), exported.constants.values()
                    )
                    if exported is not None
                    else ()
                ),
                "hand-out copies": (f for _, f in handed_out.values()),
                "inputs": (ids, x),
            }
        )
        pytorch = sum(owned["by_owner_mib"].values())
        allocated = torch.cuda.memory_allocated() / MIB
        result[stage] = {
            "in_use_mib": round(in_use, 2),
            "pytorch_tensors": owned,
            # Allocator blocks no Python tensor holds (workspaces, tensors held in C++)
            "allocator_not_tensors_mib": round(allocated - pytorch, 2),
            "outside_allocator_mib": round(in_use - (allocated - allocated_at_base), 2),
            "engines_serialized_mib": round(sum(map(len, engines)) / MIB, 2),
        }
        _progress(result)

    with torch.no_grad():
        mttm(x)
        snapshot("after_compile")
        mttm.layers[0].fc1.weight.mul_(1.01)  # a real change: refit
        mttm(x)
        snapshot("after_refit")
        # Whether a refit's extra memory is paid once or grows with every refit
        after_each_refit = []
        for _ in range(3):
            mttm.layers[0].fc1.weight.mul_(1.01)
            mttm(x)
            after_each_refit.append((used() - base_runtime) / MIB)
        result["in_use_after_three_more_refits_mib"] = after_each_refit
        # Activation memory the engines' execution contexts reserve (not part of the engine file)
        runtime = tensorrt.Runtime(tensorrt.Logger(tensorrt.Logger.ERROR))
        activations = 0
        for serialized in _serialized_engines(mttm):
            engine = runtime.deserialize_cuda_engine(bytes(serialized))
            activations += engine.device_memory_size_v2
            del engine
        result["engine_activations_mib"] = activations / MIB
    return result


def run_aligned_lookup(iters: int) -> Dict[str, Any]:
    """Median latency of the offloaded (CPU-resident) lookup with CUDA ids vs the GPU lookup."""
    import torch
    import torch_tensorrt
    from torch import nn

    vocab, hidden, batch, seq = 128000, 2048, 8, 512

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, hidden)
            self.proj = nn.Linear(hidden, hidden)

        def get_input_embeddings(self) -> nn.Embedding:
            return self.embed_tokens

        def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
            return self.proj(inputs_embeds)

    def warmed_median_ms(fn: Callable[[], object]) -> float:
        for _ in range(5):
            fn()
        return _median_ms(fn, iters)

    torch.manual_seed(0)
    model = Model().eval().half().cuda()
    on_gpu = nn.Embedding(vocab, hidden).half().cuda()
    on_gpu.load_state_dict(model.embed_tokens.state_dict())
    ids = torch.randint(0, vocab, (batch, seq), device="cuda")
    mttm = torch_tensorrt.MutableTorchTensorRTModule(
        model, min_block_size=1, offload_module_to_cpu=True
    )
    with torch.no_grad():
        mttm(on_gpu(ids[:1]))
        lookup = mttm.get_input_embeddings()
        assert model.embed_tokens.weight.device.type == "cpu"
        assert torch.equal(lookup(ids), on_gpu(ids))
        return {
            "gpu_lookup_ms": warmed_median_ms(lambda: on_gpu(ids)),
            "offloaded_lookup_ms": warmed_median_ms(lambda: lookup(ids)),
        }


# Where a refit's time goes: cProfile's cumulative seconds of these functions (by name and file),
# as children of the timed call: the release's full path and the in-place path of patch 0005.
# TensorRT's own calls (refit, serialization, deserialization) are bindings that cProfile does not
# see: they are inside the Python function that makes them.
REFIT_STEPS = (
    ("export", "export", "torch/export/"),
    ("decompositions", "run_decompositions", "exported_program.py"),
    ("lowering", "post_lowering", ""),
    ("partitioning", "partition", "partitioning/"),
    ("decode engine (base64)", "get_engine_from_encoded_engine", ""),
    (
        "full refit of one engine (TensorRT's refit included)",
        "_refit_single_trt_engine_with_gm",
        "",
    ),
    ("refit in place (all of it)", "_refit_in_place", ""),
    ("weight lookup and copies", "construct_refit_mapping_from_weight_name_map", ""),
    ("C++ runtime load (setup_engine)", "setup_engine", ""),
    ("gc.collect", "collect", ""),
    ("empty_cache", "empty_cache", ""),
    ("recording the weights", "_record_weights", ""),
)


def _refit_breakdown(profile: Any) -> Dict[str, float]:
    """Milliseconds per REFIT_STEPS entry in a cProfile.Profile (cumulative, counted once per name)."""
    import pstats

    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    steps: Dict[str, float] = {}
    for label, function, path in REFIT_STEPS:
        ms = 0.0
        for (filename, _, name), (_, _, _, cumulative, _) in stats.items():
            # builtins appear as "<method 'refit_cuda_engine' of ...>" with filename "~"
            if (name == function or f"'{function}'" in name) and path in filename:
                ms = max(ms, cumulative * 1e3)
        steps[label] = round(ms, 1)
    return steps


def run_refit_costs(
    size_mib: float, offload: bool, python_runtime: bool, repeats: int, refits: int
) -> Dict[str, Any]:
    """Time the call after each kind of weight change, with a breakdown, and memory over many refits."""
    import cProfile
    import logging
    import resource

    import torch

    dims = model_dims(size_mib)
    model = _language_model(dims, seed=0)
    x = torch.randn(2, 16, dims.hidden, device="cuda", dtype=torch.float16)
    mttm = _mutable_module(model, offload, use_python_runtime=python_runtime)
    in_place = []

    class InPlace(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            in_place.append("engine weights in place" in record.getMessage())

    log = logging.getLogger("torch_tensorrt.dynamo.runtime._MutableTorchTensorRTModule")
    log.addHandler(InPlace())
    log.setLevel(logging.INFO)
    result: Dict[str, Any] = {"runtime": "python" if python_runtime else "cpp"}
    with torch.no_grad():
        result["compile_s"] = round(_timed_ms(lambda: mttm(x)) / 1e3, 2)
        generator = torch.Generator(device="cuda").manual_seed(1)
        # Changed through the module, as the release needs to notice a change
        linears = [m for b in mttm.layers for m in (b.qkv, b.proj, b.fc1, b.fc2)]

        def one_weight() -> None:  # 8 hidden^2 fp16 values: 32 MiB at hidden 2048
            mttm.layers[0].fc1.weight.mul_(-1.0)

        def lora() -> None:  # a rank-16 delta fused into 8 linear weights
            for linear in linears[:8]:
                out_features, in_features = linear.weight.shape
                a = torch.randn(16, in_features, device="cuda", generator=generator)
                b = torch.randn(out_features, 16, device="cuda", generator=generator)
                linear.weight.add_(
                    (b @ a * 1e-2).to(linear.weight.device, torch.float16)
                )

        def every_weight() -> None:
            for p in list(mttm.layers.parameters()) + list(mttm.norm.parameters()):
                p.mul_(-1.0)

        for name, change in (
            ("one", one_weight),
            ("lora", lora),
            ("all", every_weight),
        ):
            times, paths, steps = [], [], {}
            for _ in range(repeats):
                change()
                del in_place[:]
                profile = cProfile.Profile()
                times.append(_timed_ms(lambda: profile.runcall(mttm, x)))
                paths.append("in place" if any(in_place) else "full")
                steps = _refit_breakdown(profile)
            result[f"{name}_ms"] = round(statistics.median(times), 1)
            result[f"{name}_path"] = sorted(set(paths))
            result[f"{name}_steps_ms"] = steps
            _progress(result)
        if refits:
            in_use, rss = [], []
            for i in range(refits):
                one_weight()
                mttm(x)
                if i in (0, refits - 1):
                    in_use.append(_device_memory_in_use())
                    rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            result["refits"] = refits
            result["device_mib_first_last"] = [round(b / MIB, 1) for b in in_use]
            result["host_peak_rss_mib_first_last"] = [round(k / 1024, 1) for k in rss]
    return result


# --------------------------------------------------------------------------------------------
# Orchestrator


def _last_figures(stdout: str) -> Dict[str, Any]:
    """The last JSON line a worker printed (its figures so far), or an empty dict."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def run_worker(
    site: str,
    extra_path: str,
    size: float,
    offload: str,
    flags: Sequence[str] = (),
    timeout: float = WORKER_TIMEOUT_S,
) -> Dict[str, object]:
    """Run one case in a fresh process with ``site`` first on its path; its last JSON line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, extra_path) if p)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker"]
    cmd += ["--size", str(size), "--offload", offload, *flags]
    try:
        out = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        # Workers print their figures after each phase: keep what was measured
        partial = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        result = _last_figures(partial)
        result["error"] = f"worker ran past {timeout:g} s"
        return result
    result = _last_figures(out.stdout)
    if out.returncode != 0 or not result:
        # Keep what the worker measured before it failed, and say how it failed
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        result["error"] = " | ".join(tail)
    return result


METRICS = (
    ("compile_s", "compile (s)"),
    ("forward_ms", "forward (ms, median)"),
    ("gm_forward_ms", "compiled graph module alone (ms, median)"),
    ("state_record_ms", "recording the weights' state (ms)"),
    ("after_attribute_ms", "call after attribute assignment (ms)"),
    ("after_weight_read_ms", "call after weight read (ms)"),
    ("after_equal_write_ms", "call after an in-place write of equal values (ms)"),
    ("false_refits", "refits caused by those calls"),
    ("record_weights_ms", "fingerprinting the weights, as compile and refit do (ms)"),
    ("fingerprints_ms", "of which the fingerprints (ms)"),
    ("decision_ms", "the refit decision (update_refit_condition, ms)"),
    ("refit_ms", "call after weight change: refit (ms)"),
    ("save_s", "save (s)"),
    ("load_s", "load (s)"),
    ("mem_before_compile_mib", "device memory before compile (MiB)"),
    ("engine_mib", "engines, serialized (MiB)"),
    ("mem_after_compile_mib", "device memory after compile (MiB)"),
    ("mem_after_refit_mib", "device memory after refit (MiB)"),
    ("peak_allocated_mib", "allocator peak (MiB)"),
)


def table(results: List[dict], builds: List[Tuple[str, str]]) -> str:
    """Markdown table: one row per figure, one column per build, ratios to the first build.

    With several processes per case a cell holds their median and, in brackets, their range.
    """
    names = [n for n, _ in builds]
    head = ["model", "offload", "figure", *names]
    if len(names) > 1:
        head += [f"{n}/{names[0]}" for n in names[1:]]
    rows = [head, ["---"] * len(head)]
    cases = sorted({(r["size"], r["offload"]) for r in results})
    for size, offload in cases:
        case = [r for r in results if (r["size"], r["offload"]) == (size, offload)]
        for key, label in METRICS:
            medians: List[Optional[float]] = []
            row = [f"{size:g} MiB", offload, label]
            for n in names:
                values = [
                    r[key]
                    for r in case
                    if r["build"] == n and isinstance(r.get(key), (int, float))
                ]
                if not values:
                    medians.append(None)
                    row.append("error")
                    continue
                medians.append(statistics.median(values))
                cell = f"{medians[-1]:.3g}"
                if len(values) > 1:
                    cell += f" ({min(values):.3g}–{max(values):.3g})"
                row.append(cell)
            if all(m is None for m in medians):
                continue  # not measured in this run (--forward-only, or every worker failed early)
            base = medians[0]
            for v in medians[1:]:
                row.append(f"{v / base:.3g}" if base and v is not None else "")
            rows.append(row)
        for r in case:
            if "save_load_error" in r:
                rows.append(
                    [f"{size:g} MiB", offload, f"{r['build']} save/load failed"]
                    + [r["save_load_error"]]
                )
            if "error" in r:
                rows.append(
                    [f"{size:g} MiB", offload, f"{r['build']} failed", r["error"]]
                )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        offload = args.offload == ["on"]
        result: Dict[str, Any]
        if args.refit_costs:
            result = run_refit_costs(
                args.size,
                offload,
                args.runtimes == ["python"],
                args.repeats,
                args.refits,
            )
        elif args.aligned_lookup:
            result = run_aligned_lookup(args.iters)
        elif args.memory_breakdown:
            result = run_memory_breakdown(args.size, offload)
        elif args.decision_seeds:
            result = run_decision_seeds(
                args.size, offload, args.decision_seeds, args.repeats
            )
        else:
            result = run_case(
                args.size, offload, args.iters, args.repeats, args.forward_only
            )
        _progress(result)
        return 0
    flags = ["--iters", str(args.iters), "--repeats", str(args.repeats)]
    if args.refit_costs:
        rows = []
        for size in args.sizes:
            for offload in args.offload:
                for runtime in args.runtimes:
                    for name, site in args.builds:
                        extra = ["--refit-costs", "--runtimes", runtime]
                        extra += ["--refits", str(args.refits)]
                        r = run_worker(
                            site,
                            args.extra_path,
                            size,
                            offload,
                            flags + extra,
                            args.worker_timeout,
                        )
                        r.update(build=name, size=size, offload=offload)
                        print(json.dumps(r), flush=True)
                        rows.append(r)
                        if args.json:
                            with open(args.json, "w") as f:
                                json.dump(
                                    {"builds": args.builds, "results": rows},
                                    f,
                                    indent=2,
                                )
        return 1 if any("error" in r for r in rows) else 0
    if args.aligned_lookup or args.memory_breakdown or args.decision_seeds:
        if args.aligned_lookup:
            flags.append("--aligned-lookup")
            cases = [(0.0, "on")]
        else:
            cases = [(args.sizes[0], offload) for offload in args.offload]
        if args.memory_breakdown:
            flags.append("--memory-breakdown")
        if args.decision_seeds:
            flags += ["--decision-seeds", str(args.decision_seeds)]
        rows = []
        for size, offload in cases:
            for name, site in args.builds:
                r = run_worker(
                    site, args.extra_path, size, offload, flags, args.worker_timeout
                )
                print(f"{name} offload={offload}: {json.dumps(r)}", flush=True)
                r.update(build=name, size=size, offload=offload)
                rows.append(r)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"builds": args.builds, "results": rows}, f, indent=2)
        # A worker that failed makes the run fail
        return 1 if any("error" in r for r in rows) else 0
    if args.forward_only:
        flags.append("--forward-only")
    results = []
    round_no = 0
    for size in args.sizes:
        for offload in args.offload:
            for _ in range(args.processes):
                # Alternate which build goes first from one round to the next
                order = args.builds[:: 1 if round_no % 2 == 0 else -1]
                round_no += 1
                for name, site in order:
                    r = run_worker(
                        site, args.extra_path, size, offload, flags, args.worker_timeout
                    )
                    r.update(build=name, size=size, offload=offload)
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    results.append(r)
                    if (
                        args.json
                    ):  # after every worker: a run cut short keeps its figures
                        with open(args.json, "w") as f:
                            json.dump(
                                {"builds": args.builds, "results": results}, f, indent=2
                            )
    print(table(results, args.builds))
    # A worker that failed makes the run fail
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
