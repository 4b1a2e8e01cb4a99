"""Programmatic rewards for the online-RL tests (loaded by file path, as users load theirs)."""


def the_count(prompt: str, response: str) -> float:
    """How many times the word "the" occurs: frequent enough in a briefly fine-tuned tiny model to learn."""
    return float(sum(w.strip('.,!?;:"\'').lower() == "the" for w in response.split()))


def nan_after_start(prompt: str, response: str) -> float:
    return float("nan")


not_callable = 3


def fewer_the(prompt: str, response: str) -> float:
    """A gold signal at odds with the_count: what the monitor must catch when the_count is optimised."""
    return -the_count(prompt, response)
