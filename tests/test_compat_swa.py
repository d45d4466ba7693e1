"""noisefast.get_ema_multi_avg_fn in torch's AveragedModel and Lightning's WeightAveraging, side by side
with torch.optim.swa_utils.get_ema_multi_avg_fn: 200 real optimizer steps, states equal bit for bit
(torch's _foreach_lerp_ rounds as noisefast's kernel does)."""
import pytest
import torch
from torch.optim.swa_utils import AveragedModel
from torch.optim.swa_utils import get_ema_multi_avg_fn as torch_get_ema_multi_avg_fn

import noisefast
from noisefast.compat.swa import get_ema_multi_avg_fn


def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))


def assert_states_equal(a: dict, b: dict):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_exported_at_top_level():
    assert noisefast.get_ema_multi_avg_fn is get_ema_multi_avg_fn


@pytest.mark.parametrize("use_buffers", [True, False])
def test_averaged_model_200_steps_bit_for_bit(use_buffers):
    model = small_cnn()
    theirs = AveragedModel(model, multi_avg_fn=torch_get_ema_multi_avg_fn(0.99), use_buffers=use_buffers)
    ours = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=use_buffers)
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(200):
        x = torch.randn(8, 3, 16, 16, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        theirs.update_parameters(model)
        ours.update_parameters(model)
        if i % 50 == 0:
            assert_states_equal(ours.state_dict(), theirs.state_dict())
    assert_states_equal(ours.state_dict(), theirs.state_dict())
    assert int(ours.n_averaged) == 200
    # the integer buffers (num_batches_tracked) went through torch's own rule
    if use_buffers:
        assert ours.module[1].num_batches_tracked.item() == theirs.module[1].num_batches_tracked.item() > 0


def test_mixed_lists_and_errors():
    fn = get_ema_multi_avg_fn(0.5)
    emas = [torch.zeros(3), torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.float64)]
    current = [torch.ones(3), torch.full((2,), 4, dtype=torch.int64), torch.ones(2, dtype=torch.float64)]
    fn(emas, current, torch.tensor(1))
    assert torch.equal(emas[0], torch.full((3,), 0.5))
    assert torch.equal(emas[1], torch.full((2,), 2, dtype=torch.int64))  # torch's rule for integers
    assert torch.equal(emas[2], torch.full((2,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="decay"):
        get_ema_multi_avg_fn(1.5)
    with pytest.raises(ValueError, match="tensors"):
        fn(emas[:1], current, None)


def test_lightning_weight_averaging_200_steps():
    pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed")
    from lightning.pytorch.callbacks import WeightAveraging

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = small_cnn()

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    def fit(multi_avg_fn):
        gen = torch.Generator().manual_seed(1)
        data = torch.utils.data.TensorDataset(torch.randn(800, 3, 16, 16, generator=gen),
                                              torch.randint(0, 10, (800,), generator=gen))
        module = Module()
        callback = WeightAveraging(multi_avg_fn=multi_avg_fn)
        trainer = pl.Trainer(max_steps=200, callbacks=[callback], accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
        return module.state_dict()  # WeightAveraging swaps the average into the module at the end

    ours = fit(get_ema_multi_avg_fn(0.99))
    theirs = fit(torch_get_ema_multi_avg_fn(0.99))
    assert_states_equal(ours, theirs)
