"""Time and train our GPT against nanoGPT on the same configuration, data and schedule.

    python benchmarks/train_gpt.py                              # ours, eager and torch.compile'd
    python benchmarks/train_gpt.py --nanogpt /path/to/model.py  # side by side with nanoGPT (eager)
    python benchmarks/train_gpt.py --no-compile                 # eager only (no compile time)

The configuration is nanoGPT's "baby GPT on a CPU" (its README): 4 layers, 4 heads, 128 wide,
context 64, batch 12, AdamW lr 1e-3 (beta2 0.99, weight decay 0.1), 100 warm-up steps, cosine
to 1e-4, gradient clipping 1.0, no dropout, float32. The text is Python's own documentation
(``pydoc_data.topics``), character level, last 10% held out.

nanoGPT's ``model.py`` is not in this repository: pass a copy with ``--nanogpt`` (a file that
defines ``GPT``, ``GPTConfig`` and ``GPT.configure_optimizers`` as nanoGPT does). The two models
are trained in lockstep, ``--chunk`` steps each in turn, so that a change in the machine's load
hits all alike; timings are medians over all steps but the first five. Our model runs twice from the
same seed: eager, and through ``torch.compile`` (the Trainer's ``compile`` setting; its first step
pays the compile time, reported separately). Reported: ms per step, tokens/s, model FLOP
utilisation against a measured float32 matmul peak, the validation-loss curve, and the loss over
the *whole* held-out tail (mean nats per character, :func:`aigc_book.training.evaluation.lm_loss`).
The ratios to read: ``ms_ratio_ours_over_nanogpt`` (at most 1.0: ours is at least as fast) and
``speedup_compiled_over_nanogpt`` (nanoGPT's eager ms over our compiled ms).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aigc_book.models.gpt import GPT  # noqa: E402
from aigc_book.models.transformer import TransformerConfig  # noqa: E402
from aigc_book.text.char_tokenizer import CharTokenizer  # noqa: E402
from aigc_book.text.corpora import python_docs_text, split_train_val  # noqa: E402
from aigc_book.training.evaluation import lm_loss  # noqa: E402
from aigc_book.training.objectives import causal_lm_batch, causal_lm_loss  # noqa: E402
from aigc_book.training.trainer import TrainConfig, Trainer  # noqa: E402

LAYERS, HEADS, EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, WD, BETAS, CLIP = 1e-3, 1e-4, 100, 0.1, (0.9, 0.99), 1.0


def matmul_peak_gflops(n: int = 2048, reps: int = 8) -> float:
    """Best float32 GFLOP/s of an n x n matrix product with the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def load_nanogpt(path: str):
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FullLogits(torch.nn.Module):
    """nanoGPT returns only the last position's logits without targets; ask for all of them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx):
        logits, _ = self.model(idx, targets=idx.contiguous())
        return logits, None


class NanoRun:
    """nanoGPT's train.py loop (get_batch, get_lr, clip, AdamW step), one step at a time."""

    def __init__(self, module, vocab_size, data, iters, bias, seed):
        torch.manual_seed(seed)
        cfg = module.GPTConfig(block_size=BLOCK, vocab_size=vocab_size, n_layer=LAYERS, n_head=HEADS, n_embd=EMBD,
                               dropout=0.0, bias=bias)
        self.model = module.GPT(cfg)
        self.optimizer = self.model.configure_optimizers(WD, LR, BETAS, "cpu")
        self.data, self.iters, self.step = data, iters, 0
        self.gen = torch.Generator().manual_seed(seed)
        self.ms: list[float] = []

    def get_lr(self, it):  # nanoGPT train.py
        if it < WARMUP:
            return LR * (it + 1) / (WARMUP + 1)
        if it > self.iters:
            return MIN_LR
        ratio = (it - WARMUP) / (self.iters - WARMUP)
        return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)

    def train_step(self):
        t0 = time.perf_counter()
        for g in self.optimizer.param_groups:
            g["lr"] = self.get_lr(self.step)
        b = causal_lm_batch(self.data["train"], BATCH, BLOCK, self.gen)
        _, loss = self.model(b["idx"], b["targets"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ms.append(1000 * (time.perf_counter() - t0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=25, help="steps per model before switching")
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--nanogpt", default=None, help="path to nanoGPT's model.py")
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True,
                   help="biases in Linear/LayerNorm for both models (nanoGPT's baby config uses --no-bias)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also train our model through torch.compile (default: yes)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"threads={torch.get_num_threads()}  load average (1, 5, 15 min)={load}", flush=True)
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak (2048^3): {peak:.1f} GFLOP/s", flush=True)

    text = python_docs_text()
    tok = CharTokenizer.train(text)
    train_text, val_text = split_train_val(text, 0.1)
    data = {"train": tok.encode_tensor(train_text), "val": tok.encode_tensor(val_text)}
    print(f"corpus: pydoc_data.topics, {len(train_text):,} train / {len(val_text):,} val characters, "
          f"vocabulary {tok.vocab_size}", flush=True)

    def make_trainer(compile_: bool) -> Trainer:
        torch.manual_seed(args.seed)
        model = GPT(TransformerConfig(tok.vocab_size, BLOCK, LAYERS, HEADS, EMBD, dropout=0.0, bias=args.bias))
        cfg = TrainConfig(steps=args.iters, lr=LR, min_lr=MIN_LR, warmup_steps=WARMUP, weight_decay=WD,
                          betas=BETAS, grad_clip=CLIP, seed=args.seed, progress=False, compile=compile_)
        return Trainer(model, lambda split, g: causal_lm_batch(data[split], BATCH, BLOCK, g), causal_lm_loss, cfg)

    trainer = make_trainer(False)
    ours = trainer.model
    compiled = make_trainer(True) if args.compile else None
    nano = None
    if args.nanogpt:
        nano = NanoRun(load_nanogpt(args.nanogpt), tok.vocab_size, data, args.iters, args.bias, args.seed)

    flops_per_step = (ours.flops_per_token(training=True) + 6 * EMBD * tok.vocab_size) * BATCH * BLOCK
    curves = {"step": [], "ours": [], "compiled": [], "nanogpt": []}
    t_start = time.perf_counter()
    while trainer.step < args.iters:
        n = min(args.chunk, args.iters - trainer.step)
        trainer.train(until=trainer.step + n)
        if compiled:
            compiled.train(until=compiled.step + n)
        if nano:
            for _ in range(n):
                nano.train_step()
        if trainer.step % args.eval_interval == 0 or trainer.step == args.iters:
            curves["step"].append(trainer.step)
            curves["ours"].append(lm_loss(ours, data["val"], BLOCK))
            curves["compiled"].append(lm_loss(compiled.model, data["val"], BLOCK) if compiled else None)
            curves["nanogpt"].append(lm_loss(FullLogits(nano.model), data["val"], BLOCK) if nano else None)
            print(
                f"step {trainer.step:5d}  val loss ours {curves['ours'][-1]:.4f}"
                + (f"  compiled {curves['compiled'][-1]:.4f}" if compiled else "")
                + (f"  nanoGPT {curves['nanogpt'][-1]:.4f}" if nano else ""),
                flush=True,
            )
    wall = time.perf_counter() - t_start

    def summary(ms_list, model):
        ms = statistics.median(ms_list[5:] if len(ms_list) > 10 else ms_list)
        return {
            "ms_per_iter": round(ms, 2),
            "tokens_per_s": round(BATCH * BLOCK / ms * 1000, 1),
            "gflops": round(flops_per_step / ms / 1e6, 2),
            "peak_fraction": round(flops_per_step / ms / 1e6 / peak, 4),
            "first_step_ms": round(ms_list[0], 1),
            "val_loss_tail": round(lm_loss(model, data["val"], BLOCK), 4),
        }

    result = {
        "config": {
            "layers": LAYERS,
            "heads": HEADS,
            "embd": EMBD,
            "block": BLOCK,
            "batch": BATCH,
            "iters": args.iters,
            "bias": args.bias,
        },
        "params": ours.num_parameters(),
        "flops_per_step": flops_per_step,
        "matmul_peak_gflops": round(peak, 1),
        "load_before": load,
        "load_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "wall_s": round(wall, 1),
        "ours": summary(trainer.history["ms"], ours),
        "curves": curves,
    }
    if compiled:
        result["compiled"] = summary(compiled.history["ms"], compiled.model)
        result["compile_s"] = round((result["compiled"]["first_step_ms"] - result["compiled"]["ms_per_iter"]) / 1000, 1)
        result["speedup_compiled_over_eager"] = round(
            result["ours"]["ms_per_iter"] / result["compiled"]["ms_per_iter"], 3
        )
    if nano:
        result["nanogpt"] = summary(nano.ms, FullLogits(nano.model))
        result["ms_ratio_ours_over_nanogpt"] = round(
            result["ours"]["ms_per_iter"] / result["nanogpt"]["ms_per_iter"], 3
        )
        if compiled:
            result["speedup_compiled_over_nanogpt"] = round(
                result["nanogpt"]["ms_per_iter"] / result["compiled"]["ms_per_iter"], 3
            )
    for name in ("ours", "compiled", "nanogpt"):
        if name in result:
            r = result[name]
            print(
                f"{name:8s} {r['ms_per_iter']:8.2f} ms/iter {r['tokens_per_s']:10.1f} tok/s "
                f"{r['gflops']:7.2f} GFLOP/s = {100 * r['peak_fraction']:5.1f}% of peak  "
                f"val loss (whole tail) {r['val_loss_tail']:.4f}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
