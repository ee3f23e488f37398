"""PyTorch's CPU thread count follows the machine's load (aigc_book.cpu_threads)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from aigc_book import cpu_threads
from aigc_book.cpu_threads import LoadFollower, follow_cpu_load, stop_following_cpu_load, threads_for_load


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    monkeypatch.delenv(cpu_threads.THREADS_ENV_VAR, raising=False)
    before = torch.get_num_threads()
    stop_following_cpu_load()
    yield
    stop_following_cpu_load()
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "others", "most", "expected"), [
    (2, 0.0, 2, 2), (2, 0.3, 2, 2), (2, 0.5, 2, 1), (2, 1.0, 2, 1), (2, 2.0, 2, 1),
    (8, 0.2, 8, 8), (8, 3.0, 8, 5), (8, 0.0, 4, 4),
])
def test_threads_leave_the_cores_other_processes_use(cores, others, most, expected):
    assert threads_for_load(cores, others, most) == expected


def fake_samples(follower, samples):
    """Feed the follower (time, busy CPU seconds on its cores, own CPU seconds) readings."""
    readings = iter(samples)
    follower._sample = lambda: next(readings)
    follower._last = next(readings)


def test_follower_drops_a_thread_when_another_process_takes_a_core_and_takes_it_back():
    torch.set_num_threads(2)
    follower = LoadFollower(every_s=1.0)
    follower.cores, follower.max_threads = [0, 1], 2
    # one second each: first we use 1.9 cores alone; then another process adds a full core;
    # then it stops again
    fake_samples(follower, [(0.0, 0.0, 0.0), (1.0, 1.9, 1.9), (2.0, 3.9, 2.9), (3.0, 4.9, 3.9)])
    follower()
    assert torch.get_num_threads() == 2
    follower()
    assert torch.get_num_threads() == 1
    follower()
    assert torch.get_num_threads() == 2
    assert follower.history == [(0.0, 2), (1.0, 1), (0.0, 2)]


def test_follower_looks_at_most_once_per_interval():
    follower = LoadFollower(every_s=3600.0)
    follower._sample = lambda: pytest.fail("looked at the load before the interval was over")
    follower()
    assert follower.history == []


def test_follow_cpu_load_hooks_every_optimiser_step():
    follower = follow_cpu_load()
    assert follow_cpu_load() is follower  # idempotent: one hook however often it is called
    follower.every_s = 0.0
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1)
    for _ in range(3):
        param.sum().backward()
        opt.step()
        time.sleep(0.01)
    assert len(follower.history) == 3
    stop_following_cpu_load()
    opt.step()
    assert len(follower.history) == 3


def test_get_device_cpu_starts_following_the_load():
    from aigc_book import get_device

    assert get_device("cpu").type == "cpu"
    assert cpu_threads._follower is not None


def test_a_busy_process_is_seen_as_about_one_core():
    follower = LoadFollower(every_s=0.0)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start
        follower._last = follower._sample()
        time.sleep(1.0)
        follower()
    finally:
        hog.kill()
        hog.wait()
    others, threads = follower.history[-1]
    assert others >= 0.7, follower.history  # the hog alone keeps one core busy
    assert threads <= max(1, follower.n_cores - 1)


def test_env_var_fixes_the_thread_count(monkeypatch):
    monkeypatch.setenv(cpu_threads.THREADS_ENV_VAR, "1")
    assert follow_cpu_load() is None
    assert torch.get_num_threads() == 1
    assert cpu_threads._follower is None


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_env_var_with_a_bad_value_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(cpu_threads.THREADS_ENV_VAR, value)
    with pytest.raises(ValueError, match="AIGC_CPU_THREADS=.*whole number of threads"):
        follow_cpu_load()


def test_loops_without_an_optimiser_step_look_at_the_load_too():
    cpu_threads.check_cpu_load()  # not following: nothing happens
    follower = follow_cpu_load()
    follower.every_s = 0.0
    time.sleep(0.01)
    cpu_threads.check_cpu_load()
    assert len(follower.history) == 1
    from aigc_book.models.gpt import GPT
    from aigc_book.models.transformer import TransformerConfig
    from aigc_book.training.evaluation import lm_loss

    model = GPT(TransformerConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8))
    time.sleep(0.01)
    lm_loss(model, torch.randint(0, 5, (4, 9)))  # evaluation
    time.sleep(0.01)
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3)  # generation
    assert len(follower.history) >= 3
