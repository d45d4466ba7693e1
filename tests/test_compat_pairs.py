"""noisefast/compat/_pairs.py: the pairing every compatible EMA shares (no peer needed)."""
import pytest
import torch

from noisefast.compat._pairs import PairedUpdate, copy_pairs, state_tensors
from noisefast.reference.ema_update import ema_update_loop


def test_averages_copies_and_follows_requires_grad():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3)), torch.arange(4)]
    shadows = [torch.zeros(5), torch.zeros(3), torch.zeros(4, dtype=torch.int64)]
    update = PairedUpdate(copy_frozen=True)
    update(shadows, weights, 0.75)
    expected = [torch.zeros(5), torch.zeros(3)]
    ema_update_loop(expected, [w.detach() for w in weights[:2]], 0.75)
    assert torch.equal(shadows[0], expected[0]) and torch.equal(shadows[1], expected[1])
    assert torch.equal(shadows[2], weights[2])  # not floating: copied
    weights[1].requires_grad_(False)  # read at every call: now copied
    update(shadows, weights, 0.75)
    assert torch.equal(shadows[1], weights[1].detach())
    # without copy_frozen every floating pair is averaged
    averaging = PairedUpdate(copy_frozen=False)
    before = shadows[1].clone()
    with torch.no_grad():
        weights[1].add_(1.0)
    averaging(shadows, weights, 0.5)
    expected = before.clone()
    ema_update_loop([expected], [weights[1].detach()], 0.5)
    assert torch.equal(shadows[1], expected)


def test_follows_replaced_data_and_converts_unsupported_pairings():
    weight = torch.nn.Parameter(torch.randn(6))
    shadow16 = torch.zeros(6, dtype=torch.bfloat16)  # a bf16 shadow of a float32 weight: converted source
    shadow64 = torch.zeros(6, dtype=torch.float64)  # a float64 shadow of a float32 weight
    update = PairedUpdate(copy_frozen=False)
    update([shadow16, shadow64], [weight, weight], 0.0)
    assert torch.equal(shadow16, weight.detach().bfloat16())
    assert torch.equal(shadow64, weight.detach().double())
    weight.data = torch.full((6,), 2.0)  # Module.to does this: the same Parameter, new storage
    update([shadow16, shadow64], [weight, weight], 0.0)
    assert torch.equal(shadow64, torch.full((6,), 2.0, dtype=torch.float64))
    weight.data = torch.full((6,), 3.0, dtype=torch.float64)  # Module.double(): the plan's conversions change
    update([shadow16, shadow64], [weight, weight], 0.0)
    assert torch.equal(shadow16, torch.full((6,), 3.0, dtype=torch.bfloat16))
    assert torch.equal(shadow64, torch.full((6,), 3.0, dtype=torch.float64))


def test_errors_before_any_write():
    update = PairedUpdate(copy_frozen=False)
    shadows = [torch.zeros(2), torch.zeros(3)]
    with pytest.raises(ValueError, match="shape"):
        update(shadows, [torch.ones(2), torch.ones(4)], 0.5)
    with pytest.raises(ValueError, match="2 shadows"):
        update(shadows, [torch.ones(2)], 0.5)
    with pytest.raises(ValueError, match="decay"):
        update(shadows, [torch.ones(2), torch.ones(3)], 1.5)
    assert all(not s.any() for s in shadows)
    with pytest.raises(ValueError, match="shape"):
        copy_pairs(shadows, [torch.ones(2), torch.ones(2)])
    assert all(not s.any() for s in shadows)


def test_state_tensors_is_state_dict_order():
    class WithBuffers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("persistent", torch.ones(2))
            self.register_buffer("scratch", torch.ones(3), persistent=False)
            self.register_buffer("absent", None)
            self.inner = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
            self.shared = self.inner  # a submodule under two names
            self.weight = torch.nn.Parameter(torch.zeros(1))

    model = WithBuffers()
    expected = list(model.state_dict(keep_vars=True).values())
    found = state_tensors(model)
    assert len(found) == len(expected) and all(a is b for a, b in zip(found, expected))
