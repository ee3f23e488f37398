"""The measure command: one clear line for every bad flag, and a complete, finite report on a tiny GPT."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from aigc_book.cli import build_parser
from aigc_book.commands.measure import check_args, run
from aigc_book.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TINY = ["--n-layer", "2", "--n-head", "4", "--n-embd", "32", "--block-size", "16", "--batch-size", "2",
        "--vocab-size", "50", "--steps", "1", "--max-new-tokens", "4", "--device", "cpu", "--no-progress"]
KEYS = {"device", "threads", "matmul_n", "matmul_float32_flops", "matmul_bfloat16_flops", "bfloat16_speedup",
        "memory_bandwidth", "ridge_intensity", "params", "flops_per_token", "train_ms_per_step",
        "train_tokens_per_s", "train_achieved_flops", "peak_flops", "peak_source", "mfu",
        "decode_tokens_per_s_cache", "decode_tokens_per_s_no_cache", "kv_cache_speedup", "dtype", "compiled",
        "wall_s"}


def parse(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["measure", *TINY, *flags])


@pytest.mark.parametrize("flags, message", [
    (["--n-layer", "0"], "--n-layer must be >= 1, got 0"),
    (["--n-head", "-1"], "--n-head must be >= 1"),
    (["--n-embd", "0"], "--n-embd must be >= 1"),
    (["--block-size", "0"], "--block-size must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--vocab-size", "0"], "--vocab-size must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--n-embd", "30"], "--n-embd 30 must be divisible by --n-head 4"),
    (["--max-new-tokens", "16"], "--max-new-tokens must be < --block-size (16)"),
    (["--dtype", "float16"], "--dtype must be one of float32, bfloat16, got 'float16'"),
    (["--peak", "0"], "--peak must be a finite number of FLOP/s > 0"),
    (["--peak", "nan"], "--peak must be a finite number of FLOP/s > 0"),
    (["--device", "cuda:7"], "--device: device 'cuda:7' was asked for"),
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
    pytest.param(["--n-layer", "2000", "--n-embd", "8192", "--n-head", "64"], "training needs about",
                 marks=pytest.mark.slow),
])
def test_check_measure_args_refuses_each_bad_flag_in_one_line(flags, message):
    with pytest.raises(UsageError) as err:
        check_args(parse(*flags))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_check_measure_args_accepts_the_defaults_and_returns_the_device():
    args = build_parser().parse_args(["measure", "--device", "cpu"])
    assert str(check_args(args)) == "cpu"


@pytest.mark.slow
def test_cmd_measure_reports_every_documented_key_finite():
    result = run(parse())
    assert set(result) == KEYS  # no CUDA-only key on a CPU
    json.dumps(result)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert math.isfinite(value) and value > 0 or key == "compiled", key
    assert result["device"] == "cpu" and result["peak_source"] == "measured"
    assert result["peak_flops"] == result["matmul_float32_flops"]
    assert result["mfu"] == pytest.approx(result["train_achieved_flops"] / result["peak_flops"])
    assert result["train_tokens_per_s"] == pytest.approx(2 * 16 * 1000 / result["train_ms_per_step"])
    assert result["kv_cache_speedup"] == pytest.approx(
        result["decode_tokens_per_s_cache"] / result["decode_tokens_per_s_no_cache"])


@pytest.mark.parametrize("flags", [["--n-embd", "30"], ["--dtype", "float16"], ["--steps", "0"], ["--device", "tpu"]])
def test_measure_command_line_refuses_a_bad_flag_in_one_line_with_exit_2(flags, capsys):
    from aigc_book.cli import main

    assert main(["measure", *TINY, *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("aigc-book: error: ")


@pytest.mark.slow
def test_measure_command_line_prints_one_json_object_last(capsys):
    from aigc_book.cli import main

    assert main(["measure", *TINY]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert set(json.loads(last)) == KEYS
