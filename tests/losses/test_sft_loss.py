import math

import torch

from palate.losses.sft import sft_loss


def test_sft_loss_hand_computed():
    # row 1: uniform over 3 tokens -> -log(1/3) = ln 3 = 1.0986123
    # row 2: logits (0, ln 2, 0) -> p(token 1) = 2/4 -> -log(1/2) = ln 2 = 0.6931472
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0]])
    targets = torch.tensor([2, 1])
    assert torch.isclose(sft_loss(logits, targets), torch.tensor(0.8958797), atol=1e-6)  # (1.0986123 + 0.6931472) / 2
    assert torch.isclose(sft_loss(logits, targets, normalizer=4), torch.tensor(0.4479399), atol=1e-6)


def test_normalising_by_step_tokens_makes_accumulation_exact():
    """Micro-batches of 1 and 3 tokens, normalised by the step's 4 tokens, give the full batch's gradient."""
    torch.manual_seed(0)
    logits = torch.randn(4, 7, requires_grad=True)
    targets = torch.tensor([1, 5, 0, 3])
    sft_loss(logits, targets).backward()
    full = logits.grad.clone()
    logits.grad = None
    sft_loss(logits[:1], targets[:1], normalizer=4).backward()
    sft_loss(logits[1:], targets[1:], normalizer=4).backward()
    assert torch.allclose(logits.grad, full, atol=1e-7)
    # whereas averaging per micro-batch over-weights the lone token of the first micro-batch
    logits.grad = None
    (sft_loss(logits[:1], targets[:1]) / 2 + sft_loss(logits[1:], targets[1:]) / 2).backward()
    assert not torch.allclose(logits.grad, full, atol=1e-4)
