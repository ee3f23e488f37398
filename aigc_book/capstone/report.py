"""The report card: what each stage of the pipeline cost and what it changed, as Markdown and JSON.

Introduced in chapter 8, section "The report card". :func:`render_report` turns the stages' records
(:func:`aigc_book.capstone.pipeline.run_pipeline`) into ``report.md``; :func:`write_report` writes it
and ``report.json`` (the same numbers, for scripts) atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from aigc_book.files import atomic_write
from aigc_book.tasks import instructions

__all__ = ["MODEL_STAGES", "render_report", "write_report"]

MODEL_STAGES = {"pretrained": "after pretraining", "sft": "after SFT", "tuned": "after preference tuning"}


def _flops(x: float) -> str:
    return "–" if not x else f"{x:.2e}"


def _cell(text: str) -> str:
    """Text shown in a table cell: code-formatted, with the characters that would break the table escaped."""
    text = text.replace("|", "\\|").replace("\n", " ").replace("`", "'")
    return f"`{text}`" if text.strip() else "*(empty)*"


def _stage_rows(stages: dict) -> list[str]:
    rows = ["| stage | time (s) | FLOPs | what it measured |", "|---|---:|---:|---|"]
    if (t := stages.get("tokenizer")) is not None:
        bpt = ", ".join(f"{v:.2f} on {k}" for k, v in t["bytes_per_token"].items())
        rows.append(f"| tokenizer | {t['seconds']:.1f} | – | {t['vocab_size']} tokens ({t['bpe_tokens']} "
                    f"byte-level BPE + {t['vocab_size'] - t['bpe_tokens']} special); bytes per token: {bpt} |")
    if (p := stages.get("pretrained")) is not None:
        bpb = ", ".join(f"{k} {v:.3f} (byte 5-gram {p['ngram_bits_per_byte'][k]:.3f})"
                        for k, v in p["bits_per_byte"].items())
        rows.append(f"| pretraining | {p['seconds']:.0f} | {_flops(p['flops'])} | {p['params']:,} parameters, "
                    f"{p['tokens_seen']:,} tokens seen; loss {p['loss'][0][1]:.3f} → {p['loss'][-1][1]:.3f} "
                    f"nats/token; held-out bits per byte: {bpb} |")
    if (f := stages.get("sft")) is not None:
        rows.append(f"| supervised fine-tuning | {f['seconds']:.0f} | {_flops(f['flops'])} | {f['conversations']:,} "
                    f"conversations ({f['turns']:,} turns); loss {f['loss'][0][1]:.3f} → {f['loss'][-1][1]:.3f}; "
                    f"accuracy {f['accuracy']['all']:.1%} |")
    if (u := stages.get("tuned")) is not None:
        r = u["rlhf"]
        rows.append(f"| preference tuning ({u['method']}, {u['steps']} steps) | {u['seconds']:.0f} | "
                    f"{_flops(u['flops'])} | gold reward {r['gold_reward_before']:.3f} → {r['gold_reward_after']:.3f} "
                    f"(samples at temperature 1), KL to the SFT model {r['kl']:.2f} nats; "
                    f"accuracy {u['accuracy']['all']:.1%} |")
    return rows


def _accuracy_rows(stages: dict) -> list[str]:
    done = [s for s in MODEL_STAGES if s in stages]
    if not done:
        return []
    kinds = ["all", *sorted(k for k in stages[done[0]]["accuracy"] if k != "all")]
    rows = ["| kind | " + " | ".join(f"{MODEL_STAGES[s]}, greedy | sampled" for s in done) + " |",
            "|---|" + "---:|---:|" * len(done)]
    for k in kinds:
        cells = [f"{stages[s]['accuracy'].get(k, 0):.1%} | {stages[s]['accuracy_sampled'].get(k, 0):.1%}" for s in done]
        rows.append(f"| {k} | " + " | ".join(cells) + " |")
    return rows


def _bits_rows(stages: dict) -> list[str]:
    done = [s for s in MODEL_STAGES if s in stages]
    if not done:
        return []
    sources = list(stages[done[0]]["bits_per_byte"])
    rows = ["| held-out text | byte 5-gram | " + " | ".join(MODEL_STAGES[s] for s in done) + " |",
            "|---|---:|" + "---:|" * len(done)]
    ngram = stages["pretrained"]["ngram_bits_per_byte"]
    for src in sources:
        cells = " | ".join(f"{stages[s]['bits_per_byte'][src]:.3f}" for s in done)
        rows.append(f"| {src} | {ngram[src]:.3f} | {cells} |")
    return rows


def _sample_rows(stages: dict) -> list[str]:
    done = [s for s in MODEL_STAGES if s in stages]
    if not done:
        return []
    rows = ["| prompt | right answer | " + " | ".join(MODEL_STAGES[s] for s in done) + " |",
            "|---|---|" + "---|" * len(done)]
    for prompt in stages[done[0]]["samples"]:
        try:
            right = _cell(instructions.answer(prompt))
        except ValueError:
            right = "(not an instruction)"
        rows.append(f"| {_cell(prompt)} | {right} | " + " | ".join(_cell(stages[s]["samples"][prompt]) for s in done)
                    + " |")
    return rows


def render_report(report: dict) -> str:
    """The report card as Markdown: stages, accuracy by kind, bits per byte after each stage, sample answers."""
    stages, s = report["stages"], report["settings"]
    n = s["eval_prompts"]
    parts = [
        "# Report card: a tiny ChatGPT",
        "",
        f"Made by `python -m aigc_book tiny-chatgpt` on `{report['device']}`: a GPT with {s['n_layer']} blocks, "
        f"{s['n_embd']} wide, a context of {s['block_size']} tokens, seed {s['seed']}.",
        "",
        "## Stages",
        "",
        *_stage_rows(stages),
    ]
    if (acc := _accuracy_rows(stages)):
        parts += ["", f"## Accuracy on {n} held-out instructions", "",
                  "Greedy answers, and answers sampled at the chat's default temperature, checked by the program "
                  "that knows the right answer.", "", *acc]
        if "sft" in stages:
            seen = ", ".join(f"{k} {v:.0%}" for k, v in stages["sft"]["held_out_seen_in_training"].items())
            unseen = "; ".join(f"{MODEL_STAGES[s]} {stages[s]['accuracy_unseen']['all']:.1%}"
                               for s in ("sft", "tuned") if "accuracy_unseen" in stages.get(s, {}))
            parts += ["", f"Share of the held-out prompts that also occur in the fine-tuning data: {seen}. "
                      f"Greedy accuracy on the others alone: {unseen}."]
    if (bits := _bits_rows(stages)):
        parts += ["", "## Bits per byte on held-out text after each stage", "", *bits]
    if (samples := _sample_rows(stages)):
        parts += ["", "## Sample answers (greedy)", "", *samples]
    return "\n".join(parts) + "\n"


def write_report(out, report: dict) -> None:
    """Write ``report.md`` and ``report.json`` into ``out``, each atomically."""
    out = Path(out)
    md = render_report(report).encode("utf-8")
    js = json.dumps(report, indent=1, ensure_ascii=False).encode("utf-8")
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_bytes(md))
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_bytes(js))
