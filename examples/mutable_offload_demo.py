"""Where is the user's model after each MutableTorchTensorRTModule lifecycle step?

Runs the GR00T Eagle pattern (embedding lookup with CUDA ids outside the compiled forward, then
the compiled language model on ``inputs_embeds``) after a first compile, a weight change, an
attribute assignment and save/load, and prints the device of the user's parameters and whether
the lookup worked. On an unpatched Torch-TensorRT the model ends up on the CPU after the refit.

    python examples/mutable_offload_demo.py
"""

import os
import sys
import tempfile

import torch
import torch_tensorrt

sys.path.insert(
    0, os.path.join(os.path.dirname(__file__), "..", "tests/py/dynamo/runtime")
)
from test_mutable_offload import TinyLanguageModel  # noqa: E402


def report(step: str, mttm, model: torch.nn.Module) -> None:
    input_ids = torch.randint(0, 32000, (2, 16), device="cuda")
    with torch.no_grad():
        # Refits and refit checks are lazy: the first call after a change carries them out
        mttm(
            model.embed_tokens.weight.new_zeros(2, 16, model.embed_tokens.embedding_dim)
        )
    devices = sorted({str(p.device) for p in model.parameters()})
    try:
        with torch.no_grad():
            embeds = mttm.get_input_embeddings()(input_ids)
            out = mttm(embeds)
        lookup = f"ok, output {tuple(out.shape)} on {out.device}"
    except RuntimeError as e:
        lookup = f"FAILED: {str(e).splitlines()[0]}"
    print(f"{step:<28} model parameters on {devices}; lookup + forward: {lookup}")


def main() -> None:
    print(f"torch {torch.__version__}, torch_tensorrt {torch_tensorrt.__version__}")
    torch.manual_seed(0)
    model = TinyLanguageModel().eval().cuda()
    mttm = torch_tensorrt.MutableTorchTensorRTModule(model, min_block_size=1)
    with torch.no_grad():
        mttm(model.embed_tokens(torch.randint(0, 32000, (2, 16), device="cuda")))
    report("first compile", mttm, model)
    with torch.no_grad():
        mttm.layers[0].fc1.weight.mul_(1.5)
    report("weight change (refit)", mttm, model)
    model.to(
        "cuda"
    )  # undo what an unpatched release did, to test the next step on its own
    mttm.generation_mode = "greedy"
    report("attribute assignment", mttm, model)
    model.to("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mutable.pkl")
        torch_tensorrt.MutableTorchTensorRTModule.save(mttm, path)
        loaded = torch_tensorrt.MutableTorchTensorRTModule.load(path)
    report("save + load", loaded, loaded.original_model)


if __name__ == "__main__":
    main()
