"""Example reward functions for `palate grpo` / `palate ppo` (reward.function=examples/rewards.py:NAME).

A reward function takes the prompt text and the response text and returns a float. These are transparent
toys, handy for trying the machinery before a reward model exists; a trained reward model
(reward.model=runs/demo-rm) is what judges quality.
"""


def concise_and_complete(prompt: str, response: str) -> float:
    """Prefer answers of 20-80 words that end with a full stop, a question mark or an exclamation mark."""
    words = len(response.split())
    score = 1.0 if 20 <= words <= 80 else max(0.0, 1.0 - abs(words - 50) / 100)
    return score + (0.5 if response.rstrip().endswith((".", "!", "?")) else 0.0)
