"""GRPO throughput and memory on CPU with TRL's GRPOTrainer (the TRL half of the GRPO benchmark).

    python bench/rl_trl.py                          # 2 warm-up + 10 timed steps, 4 prompts x 4 samples, 32 new tokens
    python bench/rl_trl.py --steps 1 --warmup 1     # smoke run

One process per measurement (peak RSS is this process's). The bundled SmolLM2-135M-Instruct in fp32, loaded
as palate loads it; prompts from ``bundled:preferences`` in file order, given to TRL in conversational form
(TRL applies the chat template); reward :func:`target_reward`. Each optimizer step (generation, reward,
reference and policy log-probs, backward, AdamW) is timed by a callback; the last stdout line is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft import contended, peak_rss_gib, usage, usage_delta  # noqa: E402


def target_reward(prompt: str, response: str) -> float:
    """Cheap, deterministic: 1 if the response says "please" (any case), minus 0.001 per character."""
    return (1.0 if "please" in response.lower() else 0.0) - 0.001 * len(response)


def _text(x) -> str:
    """A prompt or completion as text: plain strings as they are, chat messages joined by their contents."""
    return x if isinstance(x, str) else "\n".join(m["content"] for m in x)


def make_trl_reward(log: list):
    """:func:`target_reward` with TRL's reward-function signature; appends per call (= per step here, as
    ``steps_per_generation`` is 1) the completion token counts and the rewards to ``log``."""

    def please_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        rewards = [target_reward(_text(p), _text(c)) for p, c in zip(prompts, completions)]
        log.append({"completion_tokens": sum(len(ids) for ids in completion_ids or []), "rewards": rewards})
        return rewards

    return please_reward


def grpo_config(args):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-grpo-trl-"),
        per_device_train_batch_size=args.prompts_per_step * args.n,  # one step = prompts_per_step groups of n
        num_generations=args.n,
        gradient_accumulation_steps=1,  # so steps_per_generation = 1: one generation round per optimizer step
        max_completion_length=args.max_new_tokens,  # TRL default 512
        temperature=args.temperature, top_p=args.top_p, learning_rate=args.lr, beta=args.beta,
        num_iterations=1,
        bf16=args.precision == "bf16", fp16=False,  # TRL's default is bf16=True; the benchmark says which
        gradient_checkpointing=False,  # TRL default True: recomputation costs time, and 135M fits easily
        use_cpu=True,  # no accelerator here; explicit so accelerate never looks for one
        logging_steps=1,  # TRL default 10: log (and so clear) the metrics every step
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        max_steps=args.warmup + args.steps, seed=args.seed, data_seed=args.seed,
        remove_unused_columns=False,  # already TRL's GRPO default; stated for clarity
        dataloader_num_workers=0,
    )


def run_trl_grpo(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import datasets
    import trl
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from palate.data.readers import read_prompts
    from palate.models.load import load_model, load_tokenizer

    tok = load_tokenizer("bundled")
    model = load_model("bundled", tokenizer=tok)
    rss_after_load = peak_rss_gib()
    total = args.warmup + args.steps
    prompts = read_prompts("bundled:preferences", limit=total * args.prompts_per_step)
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}] if isinstance(p, str) else list(p)}
                                     for p in prompts])
    cfg = grpo_config(args)
    print(f"[trl-grpo] loss_type={cfg.loss_type} (TRL default), scale_rewards={cfg.scale_rewards}, "
          f"generation_batch_size={cfg.generation_batch_size}, steps_per_generation={cfg.steps_per_generation}",
          file=sys.stderr, flush=True)
    log: list[dict] = []
    t_init = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=make_trl_reward(log), args=cfg, train_dataset=ds,
                          processing_class=tok)
    init_seconds = time.perf_counter() - t_init
    gen_secs: list[float] = []
    generate = trainer._generate  # TRL's sampling (model.generate + decoding), timed alone per step

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            gen_secs.append(time.perf_counter() - t)

    trainer._generate = timed_generate

    class Timer(TrainerCallback):
        def __init__(self):
            self.secs, self.seen, self.u0, self.u1 = [], [], None, None

        def on_step_begin(self, a, state, control, **kw):
            self.t0, self.seen0 = time.perf_counter(), state.num_input_tokens_seen
            if len(self.secs) == args.warmup:
                self.u0 = usage()

        def on_step_end(self, a, state, control, **kw):
            self.secs.append(time.perf_counter() - self.t0)
            self.seen.append(state.num_input_tokens_seen - self.seen0)  # prompt + completion tokens this step
            self.u1 = usage()
            print(f"[trl-grpo] step {state.global_step}/{total}: {self.secs[-1]:.2f}s "
                  f"(generation {gen_secs[-1] if gen_secs else float('nan'):.2f}s), "
                  f"{log[-1]['completion_tokens'] if log else '?'} generated tokens", file=sys.stderr, flush=True)

    timer = Timer()
    trainer.add_callback(timer)
    torch.set_num_threads(args.threads)  # again: accelerate's setup may have changed it
    trainer.train()

    timed = slice(args.warmup, total)
    secs, gen, seen = timer.secs[timed], [r["completion_tokens"] for r in log][timed], timer.seen[timed]
    timed_usage = usage_delta(timer.u0, timer.u1)
    mean = lambda r: sum(r["rewards"]) / len(r["rewards"])  # noqa: E731
    return {
        "s_per_step": statistics.median(secs),
        "generated_tokens_per_s": sum(gen) / sum(secs),
        "generation_s_per_step": statistics.median(gen_secs[timed]),
        "sampling_tokens_per_s": sum(gen) / sum(gen_secs[timed]),  # TRL's _generate alone (transformers' generate)
        "train_tokens_per_s": sum(seen) / sum(secs) if all(seen) else None,
        "peak_rss_gib": peak_rss_gib(),
        "mean_reward_first": mean(log[0]),
        "mean_reward_last": mean(log[-1]),
        "steps": args.steps,
        "timed_usage": timed_usage,
        "contended": contended(timed_usage),
        "step_seconds": timer.secs, "generation_seconds": gen_secs,
        "generated_tokens": [r["completion_tokens"] for r in log], "train_tokens": timer.seen,
        "rss_after_load_gib": rss_after_load, "init_seconds": init_seconds,
        "loss_type": cfg.loss_type, "bf16": cfg.bf16, "activation_checkpointing": cfg.activation_checkpointing,
        "model_dtype": str(model.dtype), "has_ref_model_copy": trainer.ref_model is not None,
        "trl_version": trl.__version__,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--beta", type=float, default=0.04, help="KL coefficient")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: TRL's bf16=True (autocast)")
    result = run_trl_grpo(ap.parse_args(argv))
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
