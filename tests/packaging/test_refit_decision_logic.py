"""The refit decision from the weights (patch 0004) on real PyTorch modules, on the CPU.

The patched ``_MutableTorchTensorRTModule.py`` is loaded with ``torch_tensorrt`` faked
(``mttm_harness``); its decision helpers are then called directly.
"""

import pytest
from mttm_harness import MTTM, Calls, load_mttm

torch = pytest.importorskip("torch")
nn = torch.nn


@pytest.fixture
def decision(monkeypatch, patched_trees):
    source = (patched_trees("torch_tensorrt", "2.14.0") / MTTM).read_text()
    return load_mttm(monkeypatch, source, Calls())


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


def _decide(d, model, states, state=None):
    handed = (state.__dict__.pop("handed_out", {}) if state else {}).values()
    return d._weights_decision(model, states, handed).name


def test_nothing_changed_is_live(decision, net):
    states = decision._weight_states(net)
    net.generation_mode = "greedy"  # an attribute assignment
    with torch.no_grad():
        net.fc(torch.ones(2, 8))  # a forward pass
    assert _decide(decision, net, states) == "LIVE"


def test_a_handed_out_parameter_that_was_only_read_is_live(decision, net):
    states = decision._weight_states(net)
    state = decision.RefitState()
    decision._record_handout(state, net.fc.weight)
    _ = net.fc.weight.sum()
    assert _decide(decision, net, states, state) == "LIVE"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda n: n.fc.weight.mul_(1.5), id="in-place-under-no-grad"),
        pytest.param(lambda n: n.fc.weight.data.copy_(n.fc.weight * 2), id="data-copy"),
        pytest.param(lambda n: n.fc.weight.data.__setitem__(0, 0.0), id="data-setitem"),
        pytest.param(
            lambda n: setattr(n.fc.weight, "data", n.fc.weight.data * 2),
            id="data-rebind",
        ),
        pytest.param(
            lambda n: setattr(n.fc, "weight", nn.Parameter(n.fc.weight * 2)),
            id="parameter-reassignment",
        ),
        pytest.param(
            lambda n: n.load_state_dict({k: v * 2 for k, v in n.state_dict().items()}),
            id="load-state-dict",
        ),
        pytest.param(
            lambda n: n.load_state_dict(
                {k: v * 2 for k, v in n.state_dict().items()}, assign=True
            ),
            id="load-state-dict-assign",
        ),
        pytest.param(lambda n: n.norm.running_mean.add_(1), id="buffer-in-place"),
    ],
)
@pytest.mark.parametrize("share", [0.25, 0.0], ids=["copy", "sha256"])
def test_every_mutation_style_needs_a_refit(decision, net, mutate, share, monkeypatch):
    monkeypatch.setattr(decision, "_HANDOUT_COPY_SHARE", share)
    states = decision._weight_states(net)
    state = decision.RefitState()
    decision._record_handout(state, net.fc.weight)  # handed out by the wrapper
    fingerprint = next(iter(state.handed_out.values()))[1]
    assert isinstance(fingerprint, str if share == 0.0 else torch.Tensor)
    with torch.no_grad():
        mutate(net)
    assert _decide(decision, net, states, state) == "NEEDS_REFIT"


def test_data_copy_on_a_parameter_not_handed_out_is_not_seen(decision, net):
    """The documented limit: writes through references obtained outside the module."""
    states = decision._weight_states(net)
    with torch.no_grad():
        net.fc.weight.data.copy_(net.fc.weight * 2)
    assert _decide(decision, net, states) == "LIVE"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            lambda n: setattr(n, "extra", nn.Linear(8, 8)), id="added-submodule"
        ),
        pytest.param(
            lambda n: setattr(n, "lora_b", nn.Parameter(torch.zeros(8, 8))),
            id="zero-initialised-adapter",
        ),
        pytest.param(lambda n: setattr(n, "fc", nn.Linear(8, 16)), id="new-shape"),
        pytest.param(lambda n: n.half(), id="new-dtype"),
    ],
)
def test_structural_changes_need_a_recompilation(decision, net, mutate):
    states = decision._weight_states(net)
    mutate(net)
    assert _decide(decision, net, states) == "NEEDS_RECOMPILE"


def test_refit_state_pickles_without_handed_out_parameters(decision, net):
    import pickle

    state = decision.RefitState()
    decision._record_handout(state, net.fc.weight)
    assert "handed_out" not in pickle.loads(pickle.dumps(state)).__dict__
