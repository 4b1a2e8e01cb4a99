"""Optimizer parameter groups: no weight decay on biases/norms, per-prefix learning-rate multipliers that the
schedule keeps."""

import pytest
import torch

from palate.infra.optim import adamw, scheduler


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(3, 3)
        self.value_head = torch.nn.Linear(3, 1)


def test_groups_decay_and_scaled_learning_rates():
    net = Net()
    opt = adamw(net, 1e-3, 0.1, (0.9, 0.999), lr_scale={"value_head.": 10.0})
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(net.body.weight)]["lr"] == 1e-3 and by_param[id(net.body.weight)]["weight_decay"] == 0.1
    assert by_param[id(net.body.bias)]["lr"] == 1e-3 and by_param[id(net.body.bias)]["weight_decay"] == 0.0
    assert by_param[id(net.value_head.weight)]["lr"] == 1e-2 and by_param[id(net.value_head.weight)]["weight_decay"] == 0.1
    assert by_param[id(net.value_head.bias)]["lr"] == 1e-2 and by_param[id(net.value_head.bias)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    sched = scheduler(opt, 0, 10, 0.5)
    for _ in range(10):
        opt.step()
        sched.step()
    lrs = sorted(g["lr"] for g in opt.param_groups)  # cosine down to 0.5×, the ×10 group kept ×10
    assert lrs == pytest.approx([5e-4, 5e-4, 5e-3, 5e-3])


def test_no_scale_keeps_one_group_per_decay_kind():
    opt = adamw(Net(), 1e-3, 0.0, (0.9, 0.999))
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2] and {g["lr"] for g in opt.param_groups} == {1e-3}
