"""What this machine can do: peak FLOP/s, memory bandwidth, the roofline, and a GPT's MFU and decoding speed.

Introduced in chapter 6, section "Peak FLOP/s and model FLOP utilisation"; the roofline functions
belong to section "The roofline: compute-bound or memory-bound", and ``python -m aigc_book measure``
(:mod:`aigc_book.efficiency.measure`) runs them all outside the notebook.

* **Peak FLOP/s** is measured, not quoted: the best rate of a large square matrix product
  (``2 n**3`` FLOPs: ``n**3`` multiply-adds). A datasheet's peak (an H100 SXM's dense BF16: 989
  TFLOP/s) is an upper bound that real kernels approach, never reach; pass it as ``peak`` to compare
  against it instead.
* **Model FLOP utilisation** (MFU) is the model's FLOPs per second divided by the peak, with the FLOPs
  those the model needs, not what the implementation spends: activation recomputation is not
  counted (Chowdhery et al. 2022, "PaLM", arXiv:2204.02311, App. B). Model FLOPs per token come from
  :meth:`aigc_book.models.gpt.GPT.flops_per_token` (Kaplan et al. 2020, arXiv:2001.08361, §2.1, plus
  the output layer), three times the forward pass for a training step. That count takes attention's
  causal half (Kaplan's ``2 n_layer n_ctx n_embd``); PaLM's ``6N + 12 L H Q T`` counts the full score
  table (``full_attention=True``), about ``6 T / (72 n_embd)`` more: 4% for a 2048-wide model at
  ``T = 1024``, so MFUs computed the PaLM way are that much higher.
* **The roofline** (Williams, Waterman & Patterson 2009, "Roofline: an insightful visual performance
  model", CACM 52(4)): an operation doing ``F`` FLOPs that must move at least ``Q`` bytes between
  memory and the chip has *arithmetic intensity* ``I = F / Q`` and can run at most at
  ``min(peak, I * bandwidth)`` FLOP/s. Below the *ridge point* ``I* = peak / bandwidth`` it is
  memory-bound, above it compute-bound.

Counting conventions of :func:`roofline` (every count is the *minimum* the operation needs, so the
intensity is an upper bound and the real traffic, with caches that miss, is larger):

* matrix product ``(n, n) @ (n, n)``: ``2 n**3`` FLOPs; bytes: both inputs read once, the output
  written once, ``3 n**2`` elements. Matrix-vector product: ``2 n**2`` FLOPs, ``n**2 + 2 n`` elements.
* row softmax: 5 FLOPs per element (max, subtract, exp, sum, divide); LayerNorm: 7 (mean, subtract,
  square, sum, scale by 1/std, gain, bias); GELU, tanh form: 9 (``0.5 x (1 + tanh(c (x + 0.044715
  x**3))))``, each exp or tanh counted as one FLOP). Bytes: input read and output written once (plus
  LayerNorm's gain and bias).
* one decoding step of a GPT at batch 1 with a KV cache: FLOPs ``flops_per_token(context)`` (about
  ``2 N``); bytes: every weight read once plus the cached keys and values read once.
* one AdamW training step on ``B * T`` tokens: FLOPs ``B * T * flops_per_token(T, training=True)``;
  bytes: 40 per parameter in float32 — weights read by the forward and by the backward pass (4 + 4),
  gradients written (4), AdamW reading weight, gradient and both moments (16) and writing weight and
  both moments (12). Activations are left out, so this *overstates* the intensity: the step is
  compute-bound only if it is so even when all activations stay in cache.

All timings use :func:`aigc_book.efficiency.timing.time_call` (warm up, repeat, keep the best), which
synchronises CUDA around each timing. On a CPU shared with other programs, small operations suffer
most: with 2 threads and one core busy elsewhere, one decoding step of the default roofline GPT took
30 ms instead of 1 ms in our runs (every operation waits for the thread that shares the busy core).
When :func:`aigc_book.get_device` has started :func:`aigc_book.cpu_threads.follow_cpu_load`, each
measurement first lets the thread count follow the load; fix it with ``AIGC_CPU_THREADS=N``.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time

import torch
import torch.nn.functional as F

from aigc_book.checks import check_int, is_int, is_number
from aigc_book.cpu_threads import check_cpu_load
from aigc_book.efficiency.timing import time_call

__all__ = [
    "matmul_peak",
    "memory_bandwidth",
    "attainable_flops",
    "roofline",
    "plot_roofline",
    "training_mfu",
    "decode_speed",
    "bf16_supported",
    "ADAMW_BYTES_PER_PARAM",
]

ADAMW_BYTES_PER_PARAM = 40  # float32 training step, see the module docstring
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
_FLOPS_PER_ELEMENT = {"softmax": 5, "layernorm": 7, "gelu": 9}


# ----------------------------------------------------------------------------- small helpers


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a cpu or cuda device (timings synchronise CUDA only), got {device}")
    return device


def _dtype(dtype) -> torch.dtype:
    """A torch dtype from a dtype or its name (``"float32"``, ``"bfloat16"``, ...)."""
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    raise ValueError(f"dtype must be one of {list(_DTYPES)} (a name or torch dtype), got {dtype!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_supported(device) -> bool:
    """Whether bfloat16 arithmetic runs on ``device`` (every CPU emulates it, slowly without AMX or
    AVX-512 BF16; on CUDA it needs compute capability 8.0, Ampere, or later)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def _autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast when asked for (float32 master weights stay), a no-op otherwise."""
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def _timed(fn, device, repeats, min_seconds, grad: bool = False) -> float:
    """:func:`time_call` after a look at the CPU load, so the thread count fits the cores left free."""
    check_cpu_load()
    with torch.enable_grad() if grad else torch.no_grad():
        return time_call(fn, repeats=repeats, min_seconds=min_seconds, device=device)


# ----------------------------------------------------------------------------- peak and bandwidth


def matmul_peak(device="cpu", dtype=torch.float32, n: int | None = None, repeats: int = 3,
                min_seconds: float = 0.2) -> float:
    """Measured peak FLOP/s: ``2 n**3 / seconds`` of the best ``(n, n) @ (n, n)`` product.

    ``n`` defaults to 8192 on CUDA and 1024 on a CPU (about 1 s in all on a 2-core CPU). On CUDA,
    float32 products do not use TF32 unless ``torch.backends.cuda.matmul.allow_tf32`` is set, so
    float32 measures true single precision. bfloat16 works everywhere; on a CPU without AMX or
    AVX-512 BF16 instructions it is emulated and slower than float32.
    """
    device, dtype = _device(device), _dtype(dtype)
    if n is None:
        n = 8192 if device.type == "cuda" else 1024
    n = check_int("n", n)
    g = torch.Generator(device=device).manual_seed(0)  # drawn where they live: 8192**2 numbers on CUDA
    a, b = (torch.randn(n, n, generator=g, device=device).to(dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _timed(lambda: torch.mm(a, b, out=out), device, repeats, min_seconds)


def memory_bandwidth(device="cpu", nbytes: int | None = None, repeats: int = 3, min_seconds: float = 0.1) -> float:
    """Measured memory bandwidth in bytes/s: a copy of ``nbytes`` counts ``2 * nbytes`` (read + written).

    ``nbytes`` defaults to 1 GiB on CUDA and 128 MiB on a CPU; it must be several times the
    last-level cache, or the cache's bandwidth is measured instead.
    """
    device = _device(device)
    nbytes = check_int("nbytes", (2**30 if device.type == "cuda" else 2**27) if nbytes is None else nbytes)
    src = torch.ones(max(1, nbytes // 4), device=device)  # ones, not empty: the pages are touched now
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / _timed(lambda: dst.copy_(src), device, repeats, min_seconds)


def attainable_flops(intensity: float, peak: float, bandwidth: float) -> float:
    """The roofline: ``min(peak, intensity * bandwidth)`` FLOP/s for ``intensity`` FLOP/byte."""
    return min(peak, intensity * bandwidth)


# ----------------------------------------------------------------------------- the roofline


def _row(name: str, flops: float, nbytes: float, seconds: float) -> dict:
    return {"name": name, "flops": float(flops), "bytes": float(nbytes), "intensity": flops / nbytes,
            "seconds": seconds, "flops_per_s": flops / seconds}




def _primitive_rows(device, dtype, sizes, matvec_n, shape, repeats, min_seconds) -> list[dict]:
    """Matrix products, a matrix-vector product and three element-wise operations."""
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*s):
        return torch.randn(*s, generator=g, device=device).to(dtype)

    e = torch.empty((), dtype=dtype).element_size()
    rows = []
    for n in sizes:
        a, b = rand(n, n), rand(n, n)
        rows.append(_row(f"matmul {n}", 2 * n**3, 3 * n**2 * e, _timed(lambda a=a, b=b: a @ b, device, repeats,
                                                                         min_seconds)))
    w, v = rand(matvec_n, matvec_n), rand(matvec_n)
    rows.append(_row(f"matvec {matvec_n}", 2 * matvec_n**2, (matvec_n**2 + 2 * matvec_n) * e,
                     _timed(lambda: w @ v, device, repeats, min_seconds)))
    x = rand(*shape)
    numel, cols = x.numel(), shape[-1]
    gain, bias = rand(cols), rand(cols)
    ops = {
        "softmax": (lambda: torch.softmax(x, dim=-1), 2 * numel),
        "layernorm": (lambda: F.layer_norm(x, (cols,), gain, bias), 2 * numel + 2 * cols),
        "gelu": (lambda: F.gelu(x, approximate="tanh"), 2 * numel),
    }
    for name, (fn, elements) in ops.items():
        rows.append(_row(name, _FLOPS_PER_ELEMENT[name] * numel, elements * e, _timed(fn, device, repeats,
                                                                                       min_seconds)))
    return rows


def _default_gpt_config(device: torch.device):
    from aigc_book.models.transformer import TransformerConfig

    if device.type == "cuda":  # GPT-2 small
        return TransformerConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    return TransformerConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=256)


def _decode_row(model, device, dtype, repeats, min_seconds) -> dict:
    """One batch-1 decoding step with a KV cache holding half a context of earlier tokens."""
    c = model.config
    context = max(1, c.block_size // 2)
    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, c.vocab_size, (1, context), generator=g).to(device)
    token = prompt[:, -1:]
    cache = model.new_kv_cache(1, max_len=context + 1)
    with torch.no_grad():
        model(prompt, kv_cache=cache)  # prefill

    def step():
        cache.crop(context)  # the same step every time: context cached tokens, one new token
        model(token, kv_cache=cache)

    e = torch.empty((), dtype=dtype).element_size()
    kv_elements = 2 * c.n_layer * context * c.n_embd
    flops = model.flops_per_token(context + 1, training=False, output_layer=True)
    nbytes = (model.num_parameters() + kv_elements) * e
    return _row("GPT decode step", flops, nbytes, _timed(step, device, repeats, min_seconds))


def _train_row(model, device, dtype, batch, repeats, min_seconds) -> dict:
    """One AdamW step on ``batch`` random sequences of ``block_size`` tokens."""
    from aigc_book.training.trainer import TrainConfig, configure_optimizer

    c = model.config
    step = _train_step(model, configure_optimizer(model, TrainConfig(), device), device, dtype, batch)
    tokens = batch * c.block_size
    flops = tokens * model.flops_per_token(c.block_size, training=True, output_layer=True)
    nbytes = ADAMW_BYTES_PER_PARAM * model.num_parameters()
    return _row(f"GPT train step (B={batch})", flops, nbytes,
                _timed(step, device, repeats, min_seconds, grad=True))


def roofline(device="cpu", dtype=torch.float32, sizes=(64, 256, 1024), matvec_n: int | None = None,
             shape: tuple[int, int] | None = None, gpt_config=None, train_batch: int = 4, repeats: int = 3,
             min_seconds: float = 0.05) -> list[dict]:
    """Measure operations of every arithmetic intensity; one dict per operation.

    Each row has ``name``, ``flops``, ``bytes`` (the minimum moved, see the module docstring),
    ``intensity`` (FLOP/byte), ``seconds`` (best of ``repeats``) and ``flops_per_s`` (achieved).

    Args:
        sizes: the matrix products' ``n``.
        matvec_n: the matrix-vector product's ``n`` (default 4096 on a CPU, 16384 on CUDA: a matrix
            larger than the caches, as a weight matrix of a large model is).
        shape: ``(rows, cols)`` of the softmax, LayerNorm and GELU input (default ``(2048, 4096)``
            on a CPU, ``(16384, 8192)`` on CUDA).
        gpt_config: the GPT of the decoding and training rows (default: 4 layers, 256 wide, context
            128, vocabulary 512 on a CPU; GPT-2 small on CUDA). Its decoding step runs in ``dtype``;
            its training step keeps float32 weights and autocasts to ``dtype`` if that is 16-bit.
        train_batch: sequences per training step.

    On a 2-core CPU the defaults take about 3 s.
    """
    from aigc_book.models.gpt import GPT

    device, dtype = _device(device), _dtype(dtype)
    cuda = device.type == "cuda"
    matvec_n = check_int("matvec_n", matvec_n if matvec_n is not None else (16384 if cuda else 4096))
    shape = shape if shape is not None else ((16384, 8192) if cuda else (2048, 4096))
    if len(shape) != 2:
        raise ValueError(f"shape must be (rows, cols), got {shape!r}")
    for name, value in [*(("sizes", s) for s in sizes), ("shape", shape[0]), ("shape", shape[1]),
                        ("train_batch", train_batch)]:
        check_int(name, value)
    rows = _primitive_rows(device, dtype, sizes, matvec_n, shape, repeats, min_seconds)
    config = gpt_config if gpt_config is not None else _default_gpt_config(device)
    torch.manual_seed(0)
    model = GPT(config).to(device)
    rows.append(_train_row(model, device, dtype, train_batch, repeats, min_seconds))
    model = model.to(dtype).eval()  # inference: weights stored in dtype
    rows.append(_decode_row(model, device, dtype, repeats, min_seconds))
    del model
    if cuda:
        torch.cuda.empty_cache()
    return rows


def plot_roofline(ax, rows: list[dict], peak: float, bandwidth: float, title: str | None = None):
    """Draw the roofline ``min(peak, I * bandwidth)`` and the measured ``rows`` on ``ax`` (log-log).

    The ridge point ``peak / bandwidth`` FLOP/byte is marked: points left of it can at best reach
    ``I * bandwidth``, points right of it ``peak``. Returns ``ax``.
    """
    import numpy as np

    if not (peak > 0 and bandwidth > 0):
        raise ValueError(f"peak and bandwidth must be > 0, got {peak} and {bandwidth}")
    ridge = peak / bandwidth
    intensities = [r["intensity"] for r in rows] + [ridge]
    x = np.logspace(np.log10(min(intensities) / 4), np.log10(max(intensities) * 4), 200)
    ax.plot(x, np.minimum(peak, x * bandwidth), color="black", lw=2,
            label=f"roofline: {peak / 1e9:.3g} GFLOP/s, {bandwidth / 1e9:.3g} GB/s")
    ax.axvline(ridge, color="gray", ls=":", lw=1)
    ax.plot([ridge], [peak], marker="o", color="black")
    ax.annotate(f"ridge point: {ridge:.3g} FLOP/byte", (ridge, peak), textcoords="offset points", xytext=(6, -14),
                fontsize=8)
    for i, r in enumerate(sorted(rows, key=lambda r: r["intensity"])):
        ax.scatter(r["intensity"], r["flops_per_s"], s=25, zorder=3)
        # neighbours in intensity get labels above and below their points, so close points stay legible
        ax.annotate(r["name"], (r["intensity"], r["flops_per_s"]), textcoords="offset points",
                    xytext=(4, 4 if i % 2 == 0 else -11), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved throughput (FLOP/s)")
    ax.set_title(title or "Roofline: measured operations against this machine's limits")
    ax.legend(loc="lower right", fontsize=8)
    return ax


# ----------------------------------------------------------------------------- a GPT's MFU and decoding speed


def _train_step(model, optimizer, device, dtype, batch, forward=None, grad_clip: float = 1.0):
    """A closure running one real training step (forward, backward, clipping, AdamW) on random tokens."""
    c = model.config
    g = torch.Generator(device="cpu").manual_seed(0)
    idx = torch.randint(0, c.vocab_size, (batch, c.block_size), generator=g).to(device)
    targets = torch.randint(0, c.vocab_size, (batch, c.block_size), generator=g).to(device)
    forward = forward or model
    model.train()

    def step():
        with _autocast(device, dtype):
            loss = forward(idx, targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # as the Trainer does
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _timed_training(config, batch, device, dtype, compile, steps, warmup):
    """Seconds of each timed step, model FLOPs per token, parameters and CUDA peak memory (None elsewhere)."""
    from aigc_book.models.gpt import GPT
    from aigc_book.training.trainer import TrainConfig, configure_optimizer

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, TrainConfig(), device)
    step = _train_step(model, optimizer, device, dtype, batch, torch.compile(model) if compile else None)
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        check_cpu_load()
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    flops_per_token = model.flops_per_token(config.block_size, training=True, output_layer=True)
    peak_memory = torch.cuda.max_memory_allocated(device) if cuda else None
    return seconds, flops_per_token, model.num_parameters(), peak_memory


def training_mfu(config, batch: int, device="cpu", steps: int = 3, dtype="float32", compile: bool = False,
                 peak: float | None = None, warmup: int | None = None) -> dict:
    """Train a fresh GPT of shape ``config`` for a few AdamW steps on random tokens and report its MFU.

    Args:
        config: a :class:`~aigc_book.models.transformer.TransformerConfig`; every sequence has
            ``block_size`` tokens.
        batch: sequences per step.
        steps: timed steps (after ``warmup`` untimed ones: 1, or 3 with ``compile``).
        dtype: ``"float32"``, or ``"bfloat16"`` for bf16 autocast over float32 weights (on a CPU only
            when asked: without AMX or AVX-512 BF16 it is slower).
        compile: run forward and backward through ``torch.compile``.
        peak: the FLOP/s that MFU divides by; None measures :func:`matmul_peak` in ``dtype`` before and
            after training and keeps the higher (a peak measured while other programs ran is too low,
            and MFU can then exceed 1). Pass a datasheet's number (989e12 for an H100 SXM in dense BF16)
            to compare with published MFUs.

    Returns a dict: ``ms_per_step`` (median of the timed steps), ``tokens_per_step``, ``tokens_per_s``,
    ``flops_per_token`` (model FLOPs, output layer included, times 3 for training), ``flops_per_step``,
    ``achieved_flops`` (FLOP/s), ``peak_flops``, ``mfu`` (achieved / peak: PaLM's definition,
    arXiv:2204.02311 App. B), ``params``, ``peak_memory_bytes`` (``torch.cuda.max_memory_allocated``
    on CUDA, None elsewhere), ``dtype``, ``compiled`` and ``device``.

    The model and optimizer are freed before returning (and the CUDA cache emptied), so a 1.3B-parameter
    model can follow a smaller one in the same process.
    """
    device = _device(device)
    torch_dtype = _dtype(dtype)
    if torch_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    batch, steps = check_int("batch", batch), check_int("steps", steps)
    warmup = (3 if compile else 1) if warmup is None else warmup
    if not is_int(warmup) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    measure_peak = peak is None
    if measure_peak:
        peak = matmul_peak(device, torch_dtype)
    if not (is_number(peak) and math.isfinite(peak) and peak > 0):
        raise ValueError(f"peak must be a finite number of FLOP/s > 0, got {peak!r}")
    try:
        seconds, flops_per_token, params, peak_memory = _timed_training(config, batch, device, torch_dtype, compile,
                                                                        steps, warmup)
    finally:  # the model, its gradients and AdamW state are gone once _timed_training returns or raises
        if compile:
            torch._dynamo.reset()  # compiled graphs hold references to the model's weights
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if measure_peak:  # measured again after training, the best kept: a busy machine only ever lowers it
        peak = max(peak, matmul_peak(device, torch_dtype))
    s = statistics.median(seconds)
    tokens = batch * config.block_size
    achieved = flops_per_token * tokens / s
    return {
        "ms_per_step": 1000 * s,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / s,
        "flops_per_token": flops_per_token,
        "flops_per_step": flops_per_token * tokens,
        "achieved_flops": achieved,
        "peak_flops": float(peak),
        "mfu": achieved / peak,
        "params": params,
        "peak_memory_bytes": peak_memory,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "compiled": compile,
        "device": str(device),
    }


def decode_speed(model, device=None, batch: int = 1, new_tokens: int = 32, use_cache: bool = True,
                 prompt_len: int = 1, repeats: int = 1) -> float:
    """Tokens per second of greedy :meth:`~aigc_book.models.gpt.GPT.generate` (``temperature=0``).

    ``batch`` rows of ``prompt_len`` random tokens are continued by ``new_tokens`` tokens each;
    the rate counts every row's new tokens. The best of ``repeats`` timed runs is kept, after one
    warm-up run (CUDA is synchronised around each). Keep ``prompt_len + new_tokens <= block_size``:
    beyond it the context slides and the cache is rebuilt at every step.
    """
    device = _device(device if device is not None else next(model.parameters()).device)
    batch, new_tokens = check_int("batch", batch), check_int("new_tokens", new_tokens)
    prompt_len = check_int("prompt_len", prompt_len)
    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).to(device)
    seconds = _timed(lambda: model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache), device,
                     repeats, 0.0)
    return batch * new_tokens / seconds
