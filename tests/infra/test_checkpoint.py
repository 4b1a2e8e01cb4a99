import random

import torch

from palate.infra.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from palate.infra.optim import adamw, scheduler, warmup_cosine


def tiny_setup():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = adamw(model, 1e-2, 0.1, (0.9, 0.999))
    sched = scheduler(opt, 2, 10, 0.1)
    return model, opt, sched


def one_step(model, opt, sched):
    loss = model(torch.randn(5, 3)).pow(2).mean() + torch.nn.functional.dropout(torch.ones(1), 0.5).sum()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return loss.item()


def test_roundtrip_restores_everything_for_identical_continuation(tmp_path):
    torch.manual_seed(0)
    random.seed(0)
    model, opt, sched = tiny_setup()
    for _ in range(3):
        one_step(model, opt, sched)
    path = save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched, data_state={"k": 6})
    expected = [one_step(model, opt, sched) for _ in range(3)] + [random.random()]

    model2, opt2, sched2 = tiny_setup()  # fresh objects, different init
    progress = load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2)
    assert progress == {"step": 3, "data": {"k": 6}}
    assert [one_step(model2, opt2, sched2) for _ in range(3)] + [random.random()] == expected


def test_keep_last_and_ignore_partial_writes(tmp_path):
    model, opt, sched = tiny_setup()
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, step, model=model, optimizer=opt, scheduler=sched, data_state={}, keep_last=2)
    (tmp_path / ".step-00000010-abc").mkdir()  # a write interrupted before its rename
    (tmp_path / "step-00000012").mkdir()  # no progress.json: incomplete, ignored
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006", "step-00000008"]
    assert not any(p.name.startswith(".step-0000000") and p.name != ".step-00000010-abc" for p in tmp_path.iterdir())


def test_warmup_cosine_values():
    f = warmup_cosine(warmup_steps=2, total_steps=10, min_ratio=0.1)
    assert [round(f(s), 6) for s in (0, 1)] == [round(1 / 3, 6), round(2 / 3, 6)]
    assert f(2) == 1.0  # start of decay
    assert abs(f(6) - 0.55) < 1e-12  # halfway: 0.1 + 0.9 * 0.5
    assert abs(f(10) - 0.1) < 1e-12 and abs(f(50) - 0.1) < 1e-12


def test_no_weight_decay_on_vectors():
    model = torch.nn.Linear(3, 4)
    opt = adamw(model, 1e-3, 0.5, (0.9, 0.999))
    decays = {tuple(p.shape): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {(4, 3): 0.5, (4,): 0.0}
