"""Tests of the EMA class (noisefast.ema) and its decay schedules: diffusers' warm-ups, EDM2's power
function profiles, copy/store/restore, state_dict. The fused update it runs, ema_update_multi_, is
tested in test_ema_update.py.
"""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from noisefast.ema import EMA, ema_decay, gamma_to_sigma_rel, power_function_decay, sigma_rel_to_gamma
from noisefast.reference import ema_update as ref
from tests.helpers import assert_close


# --------------------------------------------------------------------------------------------
# Decay schedules


def test_ramp_schedule_pinned():
    """docs/formulas.md section 7: diffusers' default (1 + u) / (10 + u), u = step - 1."""
    got = [ema_decay(s, 0.9999, warmup="ramp") for s in (1, 2, 3, 10, 100, 1000)]
    assert [round(v, 4) for v in got] == [0.0, 0.1818, 0.25, 0.5263, 0.9174, 0.9911]
    assert got[1] == 2 / 11 and got[2] == 3 / 12
    assert ema_decay(10 ** 7, 0.9999, warmup="ramp") == 0.9999  # clamped to decay


def test_inverse_gamma_schedule_pinned():
    """1 - (1 + u/inv_gamma)^-power; diffusers' docs: power 2/3 reaches 0.999 at ~31.6K steps,
    power 3/4 at ~10K steps."""
    got = [round(ema_decay(s, 0.9999, warmup="inverse_gamma"), 4) for s in (1, 2, 3, 10, 100, 1000)]
    assert got == [0.0, 0.37, 0.5193, 0.7846, 0.9536, 0.99]
    assert ema_decay(31623, 1.0, warmup="inverse_gamma") == pytest.approx(0.999, abs=1e-7)
    assert ema_decay(10000, 1.0, warmup="inverse_gamma", power=0.75) == pytest.approx(0.999, abs=1e-7)
    assert ema_decay(3, 1.0, warmup="inverse_gamma", inv_gamma=2.0, power=1.0) == pytest.approx(1 - 1 / 2)


def test_schedule_update_after_step_and_clamps():
    assert [ema_decay(s, 0.99, update_after_step=5) for s in (1, 5, 6)] == [0.0, 0.0, 0.0]
    assert ema_decay(7, 0.99, update_after_step=5) == 0.99
    assert ema_decay(7, 0.99, warmup="ramp", update_after_step=5) == 2 / 11
    assert ema_decay(2, 0.99, warmup="ramp", min_decay=0.5) == 0.5
    assert ema_decay(5, 0.9, warmup=lambda u: 0.95) == 0.9
    assert ema_decay(2, 0.9) == 0.9


def test_sigma_rel_gamma_pinned():
    assert round(sigma_rel_to_gamma(0.05), 2) == 16.97
    assert round(sigma_rel_to_gamma(0.10), 2) == 6.94
    assert round(gamma_to_sigma_rel(16.97), 4) == 0.05
    assert round(gamma_to_sigma_rel(6.94), 4) == 0.1
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-12)
    for bad in (0.0, -0.1, 0.3, float("nan")):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)
    with pytest.raises(ValueError, match="gamma"):
        gamma_to_sigma_rel(-1.0)


def test_power_function_ema_closed_form():
    """beta_t = (1 - 1/t)^(gamma+1) gives ema_t = sum_i (i^(g+1) - (i-1)^(g+1)) / t^(g+1) * theta_i."""
    g = torch.Generator().manual_seed(13)
    thetas = torch.randn(200, 16, generator=g, dtype=torch.float64)
    w = torch.zeros(16, dtype=torch.float64)
    ema = EMA([w], sigma_rels=(0.05, 0.10), dtype=None)
    for t in range(1, 201):
        w.copy_(thetas[t - 1])
        ema.update()
        if t in (1, 2, 50, 200):
            for p, s in enumerate((0.05, 0.10)):
                g1 = sigma_rel_to_gamma(s) + 1
                i = torch.arange(1, t + 1, dtype=torch.float64)
                weights = (i / t) ** g1 - ((i - 1) / t) ** g1
                expected = weights @ thetas[:t]
                assert_close(ema.averaged(p)["0"], expected, rtol=1e-12, atol=1e-12, what=f"t={t} sigma_rel={s}")
    assert power_function_decay(1, 6.94) == 0.0 and power_function_decay(0, 6.94) == 0.0


# --------------------------------------------------------------------------------------------
# The EMA class


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 7)
        self.bn = nn.BatchNorm1d(7)
        self.frozen = nn.Parameter(torch.randn(3), requires_grad=False)

    def forward(self, x):
        return self.bn(self.lin(x)).sum() + self.frozen.sum()


def train_step(net, step):
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.sin(torch.arange(p.numel(), dtype=p.dtype).view(p.shape) + step))
    net.train()
    net(torch.randn(4, 5))  # moves the BatchNorm buffers


def test_ema_class_matches_reference_loop():
    torch.manual_seed(14)
    net = Net()
    ema = EMA(net, decay=0.99, warmup="ramp")
    expected = {n: p.detach().clone().float() for n, p in net.named_parameters() if p.requires_grad}
    for step in range(1, 30):
        train_step(net, step)
        ema.update()
        d = ema_decay(step, 0.99, warmup="ramp")
        for n, p in net.named_parameters():
            if p.requires_grad:
                expected[n].lerp_(p.detach(), ref.lerp_weight(d, torch.float32))
    avg = ema.averaged()
    for n, v in expected.items():
        assert torch.equal(avg[n], v), n
    assert ema.step == 29 and ema.num_updates == 29
    # Frozen parameters and buffers are copied (floating and integer alike).
    assert torch.equal(avg["frozen"], net.frozen)
    assert torch.equal(avg["bn.running_mean"], net.bn.running_mean)
    assert avg["bn.num_batches_tracked"].item() == net.bn.num_batches_tracked.item() == 29
    assert avg["bn.num_batches_tracked"].dtype == torch.int64
    # Every floating parameter has shadows (frozen ones are copied into them while frozen).
    assert ema.names[:5] == ["frozen", "lin.weight", "lin.bias", "bn.weight", "bn.bias"]


def test_ema_without_buffers_and_explicit_steps():
    net = Net()
    ema = EMA(net, decay=0.5, include_buffers=False, update_after_step=2)
    assert "bn.running_mean" not in ema.names
    before = ema.averaged()["lin.weight"].clone()
    train_step(net, 1)
    ema.update(step=3)  # u = 0: copies
    assert torch.equal(ema.averaged()["lin.weight"], net.lin.weight.detach())
    assert ema.decays_at(4) == [0.5]
    assert not torch.equal(before, net.lin.weight.detach())


def test_bfloat16_model_float32_shadows_and_stall():
    """fp32 shadows of a bf16 model keep tracking; bf16 shadows (dtype=None) stall."""
    net = nn.Linear(16, 16).to(torch.bfloat16)
    with torch.no_grad():
        net.weight.fill_(1.0)
    fp32 = EMA(net, decay=0.9999)
    bf16 = EMA(net, decay=0.9999, dtype=None)
    assert fp32.averaged()["weight"].dtype == torch.float32
    assert bf16.averaged()["weight"].dtype == torch.bfloat16
    fp32.update()  # the first update copies the weights (u = 0)
    bf16.update()
    with torch.no_grad():
        net.weight.fill_(1.5)
    for _ in range(500):
        fp32.update()
        bf16.update()
    assert torch.all(bf16.averaged()["weight"] == 1.0)
    assert fp32.averaged()["weight"][0, 0].item() == pytest.approx(1.5 - 0.5 * 0.9999 ** 500, abs=1e-5)


def test_copy_to_store_restore_average_parameters():
    torch.manual_seed(15)
    net = Net()
    ema = EMA(net, decay=0.9)
    for step in range(1, 6):
        train_step(net, step)
        ema.update()
    training = {k: v.clone() for k, v in net.state_dict().items()}
    averaged = ema.averaged()
    with ema.average_parameters(net):
        assert torch.equal(net.lin.weight, averaged["lin.weight"])
    for k, v in net.state_dict().items():
        assert torch.equal(v, training[k]), k
    with pytest.raises(RuntimeError, match="boom"):
        with ema.average_parameters(net):
            raise RuntimeError("boom")
    assert torch.equal(net.lin.weight, training["lin.weight"])
    other = Net()
    ema.copy_to(other)
    assert torch.equal(other.lin.weight, averaged["lin.weight"])
    ema.copy_to()  # into the tracked model itself
    assert torch.equal(net.lin.weight, averaged["lin.weight"])
    with pytest.raises(RuntimeError, match="store"):
        ema.restore(net)
    with pytest.raises(ValueError, match="no tensor named"):
        ema.copy_to(nn.Linear(5, 7))


def test_params_list_and_profiles():
    w = [torch.zeros(4), torch.zeros(2, 3)]
    ema = EMA(w, sigma_rels=(0.05, 0.10))
    for t in range(1, 6):
        for x in w:
            x.add_(1.0)
        ema.update()
    assert ema.decays_at(6) == [power_function_decay(6, sigma_rel_to_gamma(s)) for s in (0.05, 0.10)]
    targets = [torch.empty(4), torch.empty(2, 3)]
    ema.copy_to(targets, profile=0.10)
    assert torch.equal(targets[0], ema.averaged(1)["0"])
    ema.copy_to(targets, profile=0)
    assert torch.equal(targets[1], ema.averaged(0)["1"])
    with pytest.raises(ValueError, match="sigma_rels"):
        ema.copy_to(targets, profile=0.2)
    with pytest.raises(ValueError, match="profile"):
        ema.copy_to(targets, profile=2)
    with pytest.raises(ValueError, match="tensors"):
        ema.copy_to(targets[:1])


def test_constructor_errors():
    net = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.5)
    with pytest.raises(ValueError, match="warmup"):
        EMA(net, warmup="linear")
    with pytest.raises(ValueError, match="warmup"):
        EMA(net, sigma_rels=(0.05,), warmup="ramp")
    with pytest.raises(ValueError, match="sigma_rel"):
        EMA(net, sigma_rels=(0.5,))
    with pytest.raises(TypeError, match="dtype"):
        EMA(net, dtype=torch.bfloat16)  # a bf16 shadow of fp32 weights
    with pytest.raises(TypeError, match="model_or_params"):
        EMA(3)
    with pytest.raises(TypeError, match=r"model_or_params\[1\]"):
        EMA([torch.zeros(2), "w"])
    with pytest.raises(ValueError, match="no tensors"):
        EMA([])
    with pytest.raises(ValueError, match="update_after_step"):
        EMA(net, update_after_step=-1)
    with pytest.raises(ValueError, match="min_decay"):
        EMA(net, decay=0.9, min_decay=0.95)


def test_ema_on_cpu_device_argument():
    net = nn.Linear(4, 4).double()
    ema = EMA(net, decay=0.5, device="cpu")
    assert ema.averaged()["weight"].dtype == torch.float64  # float64 weights keep float64 shadows
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(step=5)
    assert torch.allclose(ema.averaged()["weight"], net.weight.detach() - 1.0)


# --------------------------------------------------------------------------------------------
# state_dict


def _ema_snapshot(ema):
    return ([s.clone() for shadows in ema._shadows for s in shadows], [c.clone() for c in ema._copies],
            ema.step, ema.num_updates)


def _assert_same_state(ema, snap):
    shadows, copies, step, num_updates = snap
    assert all(torch.equal(a, b) for a, b in zip([s for sh in ema._shadows for s in sh], shadows))
    assert all(torch.equal(a, b) for a, b in zip(ema._copies, copies))
    assert (ema.step, ema.num_updates) == (step, num_updates)


def test_state_dict_round_trip_weights_only():
    torch.manual_seed(16)
    net = Net()
    ema = EMA(net, sigma_rels=(0.05, 0.10))
    for step in range(1, 8):
        train_step(net, step)
        ema.update()
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = EMA(net, sigma_rels=(0.05, 0.10))  # starts from the current weights, at step 0
    fresh.load_state_dict(state)
    _assert_same_state(fresh, _ema_snapshot(ema))
    train_step(net, 8)
    ema.update()
    fresh.update()
    _assert_same_state(fresh, _ema_snapshot(ema))


def _corrupt(state, how):
    state = dict(state)
    state["averaged"] = [dict(d) for d in state["averaged"]]
    state["copied"] = dict(state["copied"])
    last = list(state["averaged"][-1])[-1]
    if how == "missing-key":
        del state["averaged"][-1][last]
    elif how == "unexpected-key":
        state["averaged"][0]["extra"] = torch.zeros(1)
    elif how == "wrong-shape":
        state["averaged"][-1][last] = torch.zeros(99)
    elif how == "missing-field":
        del state["step"]
    elif how == "profiles":
        state["sigma_rels"] = [0.05, 0.2]
    elif how == "copied-dtype":
        name = "bn.num_batches_tracked"
        state["copied"][name] = state["copied"][name].float()
    elif how == "not-tensor":
        state["averaged"][-1][last] = [1.0]
    elif how == "bad-step":
        state["step"] = -3
    return state


@pytest.mark.parametrize("how", ["missing-key", "unexpected-key", "wrong-shape", "missing-field", "profiles",
                                 "copied-dtype", "not-tensor", "bad-step"])
def test_bad_state_dict_leaves_ema_unchanged(how):
    torch.manual_seed(17)
    net = Net()
    source = EMA(net, sigma_rels=(0.05, 0.10))
    target = EMA(Net(), sigma_rels=(0.05, 0.10))
    for step in range(1, 4):
        train_step(net, step)
        source.update()
    snap = _ema_snapshot(target)
    with pytest.raises((ValueError, TypeError)):
        target.load_state_dict(_corrupt(source.state_dict(), how))
    _assert_same_state(target, snap)
    with pytest.raises(TypeError, match="mapping"):
        target.load_state_dict([1, 2])


# --------------------------------------------------------------------------------------------
# Following the module (issue #13, items 1, 3, 5, 9, 11)


def _assign_fresh_weights(net):
    net.load_state_dict({k: torch.randn_like(v) if v.is_floating_point() else v
                         for k, v in net.state_dict().items()}, assign=True)


@pytest.mark.parametrize("how", ["assign", "setattr", "to_empty", "submodule"])
def test_ema_follows_the_module_tensors_by_name(how):
    """An update averages the tensors the module holds now, not the Parameter objects it was built
    from (before: load_state_dict(assign=True) left the EMA averaging the old tensors)."""
    torch.manual_seed(30)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = EMA(net, decay=0.0)
    if how == "assign":
        _assign_fresh_weights(net)
    elif how == "setattr":
        net[0].weight = nn.Parameter(torch.randn(4, 4))
    elif how == "to_empty":
        net.to_empty(device="cpu")
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p))
    else:
        net[0] = nn.Linear(4, 4)
    ema.update()
    avg = ema.averaged()
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        assert torch.equal(avg[name], t.detach().to(avg[name].dtype)), name
    # copy_to(None) writes into the current tensors too
    ema2 = EMA(net, decay=0.0)
    net[0].bias = nn.Parameter(torch.full((4,), 7.0))
    ema2.copy_to()
    assert torch.equal(net[0].bias.detach(), ema2.averaged()["0.bias"])


@pytest.mark.parametrize("how", ["data", "half", "double", "to_empty"])
def test_ema_follows_storage_swapped_under_the_same_parameter_after_an_update(how):
    """``param.data = ...`` (what .half(), .double(), .to() and to_empty do) keeps the Parameter
    object and swaps its storage: an EMA whose plan was built before (an update ran) must average
    the new storage (before: it kept averaging the old one, silently)."""
    torch.manual_seed(31)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = EMA(net, decay=0.0)
    ema.update()  # builds the plan on the first storage
    if how == "data":
        net[0].weight.data = torch.randn(4, 4)
    elif how == "half":
        net.half()
    elif how == "double":
        net.double()  # float32 shadows cannot average float64 weights: a clear error, nothing written
        before = ema.averaged()
        with pytest.raises(TypeError, match=r"0\.weight is torch\.float64 now"):
            ema.update()
        assert all(torch.equal(ema.averaged()[k], v) for k, v in before.items())
        return
    else:
        net.to_empty(device="cpu")
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    ema.update()
    avg = ema.averaged()
    for name, p in net.named_parameters():
        assert torch.equal(avg[name], p.detach().to(avg[name].dtype)), name


def test_ema_of_buffers_only_without_include_buffers_names_the_reason():
    with pytest.raises(ValueError, match="include_buffers"):
        EMA(nn.BatchNorm1d(3, affine=False), include_buffers=False)


def test_ema_follow_rejects_a_replaced_tensor_of_another_shape():
    net = nn.Linear(4, 4)
    ema = EMA(net)
    net.weight = nn.Parameter(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="weight"):
        ema.update()
    del net.weight
    with pytest.raises(ValueError, match="weight"):
        ema.update()


def test_ema_follow_costs_no_rebuild_when_nothing_changed():
    net = nn.Sequential(*[nn.Linear(3, 3) for _ in range(4)])
    ema = EMA(net)
    ema.update()
    plan = ema._plan
    ema.update()
    assert ema._plan is plan
    net[2].weight.requires_grad_(False)
    ema.update()
    assert ema._plan is not plan


def test_frozen_flag_is_read_at_every_update():
    """diffusers' EMAModel copies a parameter that does not require grad *at that step*, and
    averages it once it is unfrozen (before: decided once, at construction)."""
    net = nn.Linear(3, 2)
    net.weight.requires_grad_(False)
    ema = EMA(net, decay=0.5)
    ema.update()  # u = 0: copies everything
    with torch.no_grad():
        net.weight.fill_(2.0)
        net.bias.fill_(2.0)
    before_bias = ema.averaged()["bias"].clone()
    ema.update(step=5)
    assert torch.equal(ema.averaged()["weight"], net.weight.detach())  # frozen: copied
    assert torch.equal(ema.averaged()["bias"], before_bias.lerp(torch.full((2,), 2.0), 0.5))
    net.weight.requires_grad_(True)  # unfrozen: averaged from now on
    with torch.no_grad():
        net.weight.fill_(4.0)
    ema.update(step=6)
    assert torch.equal(ema.averaged()["weight"], torch.full((2, 3), 3.0))
    net.bias.requires_grad_(False)  # frozen later: copied
    ema.update(step=7)
    assert torch.equal(ema.averaged()["bias"], net.bias.detach())


def test_ema_of_a_compiled_model_uses_the_inner_names():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    compiled = torch.compile(net)
    ema = EMA(compiled, decay=0.5)
    assert ema.names == EMA(net).names and all(not n.startswith("_orig_mod") for n in ema.names)
    assert set(ema.state_dict()["averaged"][0]) == {n for n, _ in net.named_parameters()}
    ema.update()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.store(compiled)
    ema.copy_to(compiled)
    assert torch.equal(net[0].weight.detach(), ema.averaged()["0.weight"])
    ema.restore(compiled)
    ema.copy_to(net)  # the bare model matches the same names
    other = EMA(net, decay=0.5)
    other.load_state_dict(ema.state_dict())


def test_copy_to_a_parameter_list_of_a_module_ema_names_the_cause():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    ema = EMA(net)
    with pytest.raises(ValueError, match="built from a module"):
        ema.copy_to(net.parameters())


def test_version_1_state_dict_loads():
    net = Net()
    ema = EMA(net, sigma_rels=(0.05, 0.10))
    train_step(net, 1)
    ema.update()
    state = ema.state_dict()
    v1 = {**state, "version": 1, "averaged": [{k: v for k, v in a.items() if k != "frozen"}
                                              for a in state["averaged"]],
          "copied": {**state["copied"], "frozen": net.frozen.detach().clone()}}
    fresh = EMA(Net(), sigma_rels=(0.05, 0.10))
    fresh.load_state_dict(v1)
    for p in range(2):
        assert torch.equal(fresh.averaged(p)["frozen"], net.frozen)
        assert torch.equal(fresh.averaged(p)["lin.weight"], ema.averaged(p)["lin.weight"])


@pytest.mark.parametrize("how", ["meta", "sparse", "subclass"])
def test_state_dict_tensor_kinds_are_checked_before_any_write(how):
    """Before: a meta tensor in the state raised after earlier shadows were overwritten."""
    net = Net()
    source = EMA(net, decay=0.5)
    train_step(net, 1)
    source.update()
    target = EMA(Net(), decay=0.5)
    snap = _ema_snapshot(target)
    state = source.state_dict()
    state = {**state, "averaged": [dict(state["averaged"][0])]}
    last = target._avg_names[-1]
    value = state["averaged"][0][last]
    if how == "meta":
        state["averaged"][0][last] = torch.empty_like(value, device="meta")
    elif how == "sparse":
        state["averaged"][0][last] = value.to_sparse()
    else:
        state["averaged"][0][last] = value.as_subclass(type("Other", (torch.Tensor,), {}))
    with pytest.raises((ValueError, TypeError), match=last.replace(".", r"\.")):
        target.load_state_dict(state)
    _assert_same_state(target, snap)


def test_schedule_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="decay"):
        ema_decay(10, decay=2.0)
    with pytest.raises(ValueError, match="gamma"):
        power_function_decay(5, -3)
    with pytest.raises(TypeError, match="t"):
        power_function_decay(2.5, 3)
    with pytest.raises(TypeError, match=r"sigma_rels\[0\]"):
        EMA(nn.Linear(2, 2), sigma_rels=["a"])
    with pytest.raises(TypeError, match="sigma_rels"):
        EMA(nn.Linear(2, 2), sigma_rels="0.05")
    with pytest.raises(ValueError, match="warmup"):
        EMA(nn.Linear(2, 2), warmup="bad")
    with pytest.raises(ValueError, match="warmup"):
        EMA(nn.Linear(2, 2), warmup=float("nan"))
    ema = EMA(nn.Linear(2, 2), warmup=lambda u: float("nan"))
    ema.update()
    before = _ema_snapshot(ema)
    with pytest.raises(ValueError, match=r"warmup\(1\)"):
        ema.update()
    _assert_same_state(ema, before)
    with pytest.raises(ValueError, match="warmup"):
        ema_decay(3, 0.9, warmup=lambda u: 1.5)
