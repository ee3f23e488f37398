"""What training and serving a language model costs: FLOPs, GPU-hours, utilisation, days and dollars.

Introduced in chapter 6, section "From our GPT to GPT-3: training compute and money"; the inference
half (decode-step bounds, the critical batch, dollars per million tokens) is introduced in chapter 6,
section "The cost of an answer".

Training. A dense Transformer with ``N`` parameters trained on ``D`` tokens costs about ``C = 6·N·D``
FLOPs (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv:2001.08361, §2.1; the
code is :func:`aigc_book.facts.training_flops_estimate`). On accelerators with peak ``P`` FLOP/s that
sustain a fraction ``MFU`` of it (model FLOP utilisation, Chowdhery et al. 2022, PaLM,
arXiv:2204.02311, §4.1 and App. B), the run takes ``C / (P·MFU)`` accelerator-seconds. Turned around, published
GPU-hours give an *implied* MFU, ``6·N·D / (GPU-hours · 3600 · P)``. That figure is a lower bound on the
utilisation of the training steps themselves: GPU-hours count every hour the machines were held,
including restarts after failures, checkpointing and evaluation, so it comes out below a utilisation
measured on steady training steps (see :func:`compute_table` for Llama 3.1 405B).

Peaks are the dense BF16 tensor-core figures of ``aigc_book/data/accelerators.csv``; NVIDIA's
headline figures that assume 2:4 structured sparsity are twice as large and are not reached by
dense training.

Inference. Generating one token per sequence costs ``2·N`` FLOPs per sequence (Kaplan et al. 2020,
§2.1), and every step reads all the weights once from memory, whatever the batch. With the roofline
model (Williams, Waterman & Patterson 2009, "Roofline: an insightful visual performance model",
Communications of the ACM 52(4)) a step takes the larger of its compute time and its memory time;
:func:`critical_batch` is the batch at which the two are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from aigc_book.checks import check_fraction, check_number, is_int
from aigc_book.facts import ModelFacts, load_models, positive_number, read_table, training_flops_estimate

__all__ = [
    "ACCELERATORS_CSV_COLUMNS",
    "ACTIVE_PARAMS",
    "COST_GROWTH_PER_YEAR",
    "HARDWARE_TO_ACCELERATOR",
    "PUBLISHED_TRAINING_COSTS",
    "Accelerator",
    "ComputeRow",
    "PublishedCost",
    "compute_table",
    "cost_calculator_widget",
    "cost_per_million_tokens",
    "cost_table",
    "critical_batch",
    "decode_step_bounds",
    "describe_training_run",
    "format_cost_table",
    "implied_mfu",
    "load_accelerators",
    "training_flops",
    "training_time_and_cost",
]

SECONDS_PER_HOUR = 3600.0

ACCELERATORS_CSV_COLUMNS = (
    "name",
    "bf16_dense_tflops",
    "memory_gb",
    "memory_bandwidth_gb_s",
    "source",
    "confidence",
)


# --------------------------------------------------------------------------------------------------
# Accelerators
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accelerator:
    """One row of ``accelerators.csv``: a chip's dense BF16 peak, memory size and memory bandwidth."""

    name: str
    bf16_dense_tflops: float
    memory_gb: float
    memory_bandwidth_gb_s: float
    source: str
    confidence: str

    @property
    def peak_flops(self) -> float:
        """Dense BF16 peak in FLOP/s (``1 TFLOP/s = 1e12 FLOP/s``)."""
        return self.bf16_dense_tflops * 1e12

    @property
    def bandwidth(self) -> float:
        """Memory bandwidth in bytes per second (``1 GB/s = 1e9 B/s``, decimal as in datasheets)."""
        return self.memory_bandwidth_gb_s * 1e9


def load_accelerators(path: str | Path | None = None) -> list[Accelerator]:
    """Load the accelerators table (A100 80GB SXM and H100 SXM), in file order.

    ``path`` defaults to the copy shipped inside the package. Every row carries its source (the
    NVIDIA datasheet values) and a confidence label, ``V`` (checked) or ``M`` (from memory).
    Malformed rows raise ``ValueError`` naming the line and column.
    """
    rows: list[Accelerator] = []
    for line, raw in read_table("accelerators.csv", ACCELERATORS_CSV_COLUMNS, path):
        for column in ("name", "source"):
            if not raw[column].strip():
                raise ValueError(f"accelerators.csv line {line}: column {column!r} must not be empty")
        if raw["confidence"].strip() not in ("V", "M"):
            raise ValueError(f"accelerators.csv line {line}: confidence must be 'V' or 'M', got {raw['confidence']!r}")
        numbers = {
            c: positive_number(raw[c], table="accelerators.csv", column=c, line=line)
            for c in ("bf16_dense_tflops", "memory_gb", "memory_bandwidth_gb_s")
        }
        rows.append(
            Accelerator(
                name=raw["name"].strip(), source=raw["source"].strip(), confidence=raw["confidence"].strip(), **numbers
            )
        )
    return rows


def _accelerator(name: str) -> Accelerator:
    by_name = {a.name: a for a in load_accelerators()}
    if name not in by_name:
        raise ValueError(f"unknown accelerator {name!r}; choose one of {sorted(by_name)}")
    return by_name[name]


# --------------------------------------------------------------------------------------------------
# Checking inputs
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Training: FLOPs, utilisation, time and money
# --------------------------------------------------------------------------------------------------


def training_flops(n_params: float, n_tokens: float) -> float:
    """Training compute ``6·N·D`` FLOPs (Kaplan et al. 2020, arXiv:2001.08361, §2.1).

    The same estimate as :func:`aigc_book.facts.training_flops_estimate` (this function calls it):
    ``2N`` FLOPs per token forward, ``4N`` backward. For a mixture-of-experts model pass the
    parameters *active* per token.

    >>> f"{training_flops(175e9, 300e9):.3e}"   # GPT-3; Brown et al. 2020 publish 3.14e23
    '3.150e+23'
    """
    return training_flops_estimate(n_params, n_tokens)


def implied_mfu(n_params: float, n_tokens: float, gpu_hours: float, peak_flops: float) -> float:
    """The model FLOP utilisation a published run implies: ``6·N·D / (GPU-hours · 3600 · peak)``.

    ``peak_flops`` is one accelerator's dense peak in FLOP/s. MFU is defined by Chowdhery et al.
    2022 (PaLM, arXiv:2204.02311, §4.1 and App. B) as observed model FLOPs per second over the peak, counting
    only the FLOPs the model needs (no recomputation). Because published GPU-hours include time not
    spent in training steps (failures, restarts, evaluation), the implied figure is at most the MFU
    of the steps themselves.

    >>> f"{implied_mfu(65e9, 1.4e12, 1_022_362, 312e12):.3f}"   # LLaMA-65B on A100s
    '0.475'
    """
    check_number("gpu_hours", gpu_hours)
    check_number("peak_flops", peak_flops)
    return training_flops(n_params, n_tokens) / (gpu_hours * SECONDS_PER_HOUR * peak_flops)


def training_time_and_cost(
    flops: float, peak_flops: float, n_accelerators: int, mfu: float, price_per_hour: float
) -> dict[str, float]:
    """Wall-clock time, accelerator-hours and rental cost of a training run of ``flops`` FLOPs.

    Assumptions: every accelerator sustains ``mfu · peak_flops`` FLOP/s for the whole run (no
    failures, no idle time, perfect scaling across ``n_accelerators``), and each accelerator-hour
    costs ``price_per_hour`` (dollars). Returns ``{"accelerator_hours", "wall_clock_hours",
    "wall_clock_days", "cost"}``; the cost is the same whatever the number of accelerators, only
    the wall-clock time changes.
    """
    check_number("flops", flops)
    check_number("peak_flops", peak_flops)
    if not is_int(n_accelerators):
        raise TypeError(f"n_accelerators must be an int, got {type(n_accelerators).__name__}")
    if n_accelerators < 1:
        raise ValueError(f"n_accelerators must be at least 1, got {n_accelerators}")
    check_fraction("mfu", mfu)
    check_number("price_per_hour", price_per_hour, inclusive=True)
    accelerator_hours = flops / (peak_flops * mfu) / SECONDS_PER_HOUR
    wall_clock_hours = accelerator_hours / n_accelerators
    return {
        "accelerator_hours": accelerator_hours,
        "wall_clock_hours": wall_clock_hours,
        "wall_clock_days": wall_clock_hours / 24,
        "cost": accelerator_hours * price_per_hour,
    }


# --------------------------------------------------------------------------------------------------
# Published models: 6ND against published compute, implied MFU
# --------------------------------------------------------------------------------------------------

# A mixture of experts runs only some experts per token, so 6·N·D must use the parameters active per
# token; with DeepSeek-V3's 671e9 total parameters it would overstate the compute 18-fold.
ACTIVE_PARAMS: dict[str, float] = {
    "DeepSeek-V3": 37e9,  # DeepSeek-AI 2024, arXiv:2412.19437, abstract: "37B activated for each token"
}

# models.csv names hardware as the papers do; these are the accelerators.csv rows whose peaks apply.
# Meta's "A100-80GB" has the same 312 TFLOP/s dense peak in its SXM and PCIe forms; "H100-80GB" is
# taken to be the SXM part (a PCIe H100 has a lower peak, which would raise the implied MFU).
HARDWARE_TO_ACCELERATOR: dict[str, str] = {"A100-80GB": "A100 80GB SXM", "H100-80GB": "H100 SXM"}


@dataclass(frozen=True)
class ComputeRow:
    """One model of ``models.csv`` with its 6·N·D estimate and, where GPU-hours are published, its MFU.

    ``ratio`` is published FLOPs / 6·N·D. ``implied_mfu`` is None where the source gives no
    GPU-hours or ``accelerators.csv`` has no peak for the hardware; ``note`` says which.
    """

    model: str
    params: float
    active_params: float
    tokens: float | None
    flops_6nd: float | None
    published_flops: float | None
    ratio: float | None
    gpu_hours: float | None
    hardware: str | None
    implied_mfu: float | None
    note: str
    source: str


def _compute_row(m: ModelFacts, accelerators: dict[str, Accelerator]) -> ComputeRow:
    active = ACTIVE_PARAMS.get(m.model, m.params)
    notes = []
    if active != m.params:
        notes.append(f"mixture of experts: 6ND uses the {active / 1e9:g}e9 active parameters, not {m.params / 1e9:g}e9")
    flops = training_flops(active, m.training_tokens) if m.training_tokens is not None else None
    if flops is None:
        notes.append("no published token count")
    ratio = m.training_flops / flops if (flops is not None and m.training_flops is not None) else None
    mfu = None
    if m.gpu_hours is not None and m.training_tokens is not None:
        name = HARDWARE_TO_ACCELERATOR.get(m.hardware or "")
        if name is None or name not in accelerators:
            notes.append(f"no peak for {m.hardware} in accelerators.csv, so no implied MFU")
        else:
            mfu = implied_mfu(active, m.training_tokens, m.gpu_hours, accelerators[name].peak_flops)
            notes.append(f"MFU against the {name} dense BF16 peak")
    return ComputeRow(
        model=m.model,
        params=m.params,
        active_params=active,
        tokens=m.training_tokens,
        flops_6nd=flops,
        published_flops=m.training_flops,
        ratio=ratio,
        gpu_hours=m.gpu_hours,
        hardware=m.hardware,
        implied_mfu=mfu,
        note="; ".join(notes),
        source=m.source,
    )


def compute_table(models: list[ModelFacts] | None = None) -> list[ComputeRow]:
    """One :class:`ComputeRow` per model of ``models.csv`` (or of ``models``), in release order.

    For the shipped table: 6·N·D gives GPT-3 3.15e23 against the published 3.14e23 (Brown et al.
    2020, Table D.1), and Llama 3.1 405B 3.79e25 against "about 3.8e25" (Llama Team 2024,
    arXiv:2407.21783). Implied MFUs: LLaMA-65B about 48% and Llama 2 70B about 44% of the A100
    peak; Llama 3 70B about 28% and Llama 3.1 405B about 35% of the H100 peak. The Llama 3.1 paper
    reports 38-43% MFU for its training steps; the implied figure is lower because its 30.84M
    GPU-hours count all the time the GPUs were held, not only steady training steps.
    DeepSeek-V3 is a mixture of experts, so 6·N·D uses its 37e9 active parameters
    (:data:`ACTIVE_PARAMS`); its H800 has no row in ``accelerators.csv``, so no MFU is implied.
    """
    accelerators = {a.name: a for a in load_accelerators()}
    return [_compute_row(m, accelerators) for m in (load_models() if models is None else models)]


# --------------------------------------------------------------------------------------------------
# Published cost estimates (quote these rather than our own arithmetic with cloud prices)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedCost:
    """A published estimate of one model's training cost in US dollars, with what it covers."""

    model: str
    cost_usd: float
    basis: str
    source: str


_AI_INDEX = "Stanford AI Index Report 2024, with Epoch AI"
PUBLISHED_TRAINING_COSTS: tuple[PublishedCost, ...] = (
    PublishedCost("GPT-3", 4.3e6, "estimated from cloud rental prices", _AI_INDEX),
    PublishedCost("PaLM", 12.4e6, "estimated from cloud rental prices", _AI_INDEX),
    PublishedCost("Llama 2 70B", 3.9e6, "estimated from cloud rental prices", _AI_INDEX),
    PublishedCost("GPT-4", 78e6, "estimated from cloud rental prices", _AI_INDEX),
    PublishedCost("Gemini Ultra", 191e6, "estimated from cloud rental prices", _AI_INDEX),
    PublishedCost(
        "DeepSeek-V3",
        5.576e6,
        "2.788M H800 GPU-hours at an assumed $2 per GPU-hour; the final training run only, not the research before it",
        "DeepSeek-AI 2024, DeepSeek-V3 Technical Report, arXiv:2412.19437",
    ),
)

# Cottier et al. 2024, "The rising costs of training frontier AI models", arXiv:2405.21015: the
# amortised cost of the most compute-intensive training runs grew 2.4x per year since 2016
# (90% CI 2.0x to 2.9x).
COST_GROWTH_PER_YEAR = 2.4


# --------------------------------------------------------------------------------------------------
# Inference: the roofline of one decoding step
# --------------------------------------------------------------------------------------------------


def decode_step_bounds(
    n_params: float,
    batch: int,
    *,
    bytes_per_param: float = 2,
    kv_bytes: float = 0,
    peak_flops: float,
    bandwidth: float,
) -> dict[str, float | str]:
    """Lower bounds on the time of one decoding step (one new token for each of ``batch`` sequences).

    - compute time ``2·N·batch / peak_flops``: ``2N`` FLOPs per token (Kaplan et al. 2020,
      arXiv:2001.08361, §2.1), attention's own FLOPs ignored;
    - memory time ``(N·bytes_per_param + kv_bytes) / bandwidth``: the weights are read once per step
      and shared by the whole batch; ``kv_bytes`` is the total KV cache read by the step (all
      sequences together, it grows with batch and context).

    The step takes the larger of the two (the roofline, Williams et al. 2009, with perfect overlap of
    compute and memory traffic and the peaks actually reached), so these are best cases. For a model
    split over several devices, pass the devices' summed peak and bandwidth. Returns
    ``compute_seconds``, ``memory_seconds``, ``step_seconds``, ``bound`` (``"compute"``,
    ``"memory"`` or ``"balanced"``), ``tokens_per_second`` (``batch / step_seconds``) and
    ``arithmetic_intensity`` (FLOPs per byte moved).
    """
    check_number("n_params", n_params)
    if not is_int(batch):
        raise TypeError(f"batch must be an int, got {type(batch).__name__}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    check_number("bytes_per_param", bytes_per_param)
    check_number("kv_bytes", kv_bytes, inclusive=True)
    check_number("peak_flops", peak_flops)
    check_number("bandwidth", bandwidth)
    flops = 2.0 * n_params * batch
    moved = n_params * bytes_per_param + kv_bytes
    compute_s, memory_s = flops / peak_flops, moved / bandwidth
    step_s = max(compute_s, memory_s)
    bound = "compute" if compute_s > memory_s else "memory" if memory_s > compute_s else "balanced"
    return {
        "compute_seconds": compute_s,
        "memory_seconds": memory_s,
        "step_seconds": step_s,
        "bound": bound,
        "tokens_per_second": batch / step_s,
        "arithmetic_intensity": flops / moved,
    }


def critical_batch(
    n_params: float,
    bytes_per_param: float,
    peak_flops: float,
    bandwidth: float,
    *,
    kv_bytes_per_sequence: float = 0,
) -> float:
    """The batch at which a decoding step's compute time equals its memory time.

    Setting ``2·N·B / peak = (N·b + B·kv) / bandwidth`` (``b`` bytes per parameter, ``kv`` bytes of
    KV cache read per sequence) and collecting the terms in ``B``:

        B · (2·N / peak - kv / bandwidth) = N·b / bandwidth,
        B* = (N·b / bandwidth) / (2·N / peak - kv / bandwidth).

    With weights only (``kv = 0``) ``N`` cancels: ``B* = (peak / bandwidth) · (b / 2)``, the
    accelerator's FLOPs per byte times the bytes per parameter over 2. For an H100 SXM in BF16 that
    is ``989e12 / 3.35e12 ≈ 295`` sequences. Below ``B*`` a step is memory-bound (more sequences
    come almost free), above it compute-bound. If the KV cache per sequence is so large that
    ``kv / bandwidth >= 2·N / peak`` the step stays memory-bound at every batch: returns ``inf``.
    The result is a real number; round up for a whole batch.
    """
    check_number("n_params", n_params)
    check_number("bytes_per_param", bytes_per_param)
    check_number("peak_flops", peak_flops)
    check_number("bandwidth", bandwidth)
    check_number("kv_bytes_per_sequence", kv_bytes_per_sequence, inclusive=True)
    extra_compute_per_sequence = 2.0 * n_params / peak_flops - kv_bytes_per_sequence / bandwidth
    if extra_compute_per_sequence <= 0:
        return math.inf
    return (n_params * bytes_per_param / bandwidth) / extra_compute_per_sequence


def cost_per_million_tokens(price_per_hour: float, tokens_per_second: float) -> float:
    """Dollars per million generated tokens: ``price_per_hour / 3600 / tokens_per_second · 1e6``.

    ``price_per_hour`` is what the hardware serving the tokens costs per hour (all its devices), and
    ``tokens_per_second`` its sustained output rate, e.g. ``decode_step_bounds(...)["tokens_per_second"]``.
    Prompt processing, idle time and margins are not included.
    """
    check_number("price_per_hour", price_per_hour, inclusive=True)
    check_number("tokens_per_second", tokens_per_second)
    return price_per_hour / SECONDS_PER_HOUR / tokens_per_second * 1e6


# --------------------------------------------------------------------------------------------------
# A cost calculator: a static table for the chapter, and a widget for the reader
# --------------------------------------------------------------------------------------------------


def cost_table(
    n_params: float,
    n_tokens: float,
    *,
    n_accelerators: int,
    mfu: float,
    price_per_hour: float,
    accelerators: list[Accelerator] | None = None,
) -> list[dict[str, float | str]]:
    """Days and dollars to train ``n_params`` on ``n_tokens`` (6·N·D FLOPs) on each accelerator.

    One dict per accelerator (default: every row of ``accelerators.csv``) with ``accelerator``,
    ``peak_tflops``, ``flops``, ``accelerator_hours``, ``wall_clock_days`` and ``cost``; the
    assumptions are those of :func:`training_time_and_cost`.
    """
    flops = training_flops(n_params, n_tokens)
    rows = []
    for acc in load_accelerators() if accelerators is None else accelerators:
        run = training_time_and_cost(flops, acc.peak_flops, n_accelerators, mfu, price_per_hour)
        rows.append(
            {
                "accelerator": acc.name,
                "peak_tflops": acc.bf16_dense_tflops,
                "flops": flops,
                "accelerator_hours": run["accelerator_hours"],
                "wall_clock_days": run["wall_clock_days"],
                "cost": run["cost"],
            }
        )
    return rows


def format_cost_table(rows: list[dict[str, float | str]]) -> str:
    """The rows of :func:`cost_table` as a fixed-width text table, ready to ``print``."""
    lines = [f"{'accelerator':<16}{'peak TFLOP/s':>13}{'FLOPs':>11}{'acc.-hours':>13}{'days':>9}{'cost $':>15}"]
    for r in rows:
        lines.append(
            f"{r['accelerator']:<16}{r['peak_tflops']:>13,.0f}{r['flops']:>11.2e}"
            f"{r['accelerator_hours']:>13,.0f}{r['wall_clock_days']:>9,.1f}{r['cost']:>15,.0f}"
        )
    return "\n".join(lines)


def describe_training_run(
    n_params: float, n_tokens: float, *, peak_flops: float, n_accelerators: int, mfu: float, price_per_hour: float
) -> str:
    """One paragraph: the 6·N·D FLOPs of a run, its accelerator-hours, days and dollars (the widget's text)."""
    flops = training_flops(n_params, n_tokens)
    run = training_time_and_cost(flops, peak_flops, n_accelerators, mfu, price_per_hour)
    return (
        f"6ND = 6 x {n_params:.3g} x {n_tokens:.3g} = {flops:.3e} FLOPs. "
        f"At {mfu:.0%} of {peak_flops / 1e12:,.0f} TFLOP/s per accelerator that is "
        f"{run['accelerator_hours']:,.0f} accelerator-hours: {run['wall_clock_days']:,.1f} days on "
        f"{n_accelerators:,} accelerators, ${run['cost']:,.0f} at ${price_per_hour:,.2f} per accelerator-hour."
    )


def cost_calculator_widget():
    """An ipywidgets box: pick an accelerator (or a custom peak), count, MFU, $/hour, parameters and
    tokens; the text below re-renders the days and dollars of :func:`describe_training_run`.

    The default price is DeepSeek-AI's assumed $2 per GPU-hour (arXiv:2412.19437), not a quote.
    Returns the box without displaying it (``display(cost_calculator_widget())`` in a notebook).
    """
    import ipywidgets as widgets  # imported here: the rest of the module needs no widget library

    custom = "custom peak"
    accelerators = {a.name: a for a in load_accelerators()}
    style = {"description_width": "170px"}
    chip = widgets.Dropdown(options=[*accelerators, custom], value="H100 SXM", description="accelerator", style=style)
    custom_peak = widgets.BoundedFloatText(
        value=100.0, min=0.001, max=1e6, description="custom peak TFLOP/s", disabled=True, style=style
    )
    count = widgets.BoundedIntText(value=1024, min=1, max=10_000_000, description="accelerators", style=style)
    mfu = widgets.FloatSlider(value=0.4, min=0.05, max=0.8, step=0.01, description="MFU", style=style)
    price = widgets.BoundedFloatText(value=2.0, min=0.0, max=1e4, description="$ per accelerator-hour", style=style)
    params = widgets.BoundedFloatText(value=175.0, min=1e-6, max=1e6, description="parameters (billions)", style=style)
    tokens = widgets.BoundedFloatText(value=300.0, min=1e-6, max=1e7, description="tokens (billions)", style=style)
    result = widgets.HTML()

    def render(_change=None) -> None:
        custom_peak.disabled = chip.value != custom
        peak = custom_peak.value * 1e12 if chip.value == custom else accelerators[chip.value].peak_flops
        text = describe_training_run(
            params.value * 1e9,
            tokens.value * 1e9,
            peak_flops=peak,
            n_accelerators=int(count.value),
            mfu=mfu.value,
            price_per_hour=price.value,
        )
        result.value = f"<p>{text}</p>"

    for w in (chip, custom_peak, count, mfu, price, params, tokens):
        w.observe(render, names="value")
    render()
    return widgets.VBox([chip, custom_peak, count, mfu, price, params, tokens, result])
