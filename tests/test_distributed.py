"""Data parallelism: DDP's gradients are one big batch's, the ranks stay identical, resume stays exact,
FSDP agrees with DDP, torchrun runs the command line, and the all-reduce formula counts what a ring sends.

Two processes on the CPU (gloo) are started once for the whole module (a few seconds); the workers
below run inside them and must stay importable (module level) for ``spawn``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aigc_book.efficiency import data_parallel
from aigc_book.training import distributed as dp

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
REPO = Path(__file__).resolve().parents[1]
STEPS = 6


# ---- what runs inside the two processes -----------------------------------------------------------
def _trainer(dropout: float = 0.1, distributed=None, interrupt_at_call: int | None = None):
    from aigc_book.models.gpt import GPT
    from aigc_book.models.transformer import TransformerConfig
    from aigc_book.training.objectives import causal_lm_batch, causal_lm_loss
    from aigc_book.training.trainer import TrainConfig, Trainer

    data = torch.randint(50, (2000,), generator=torch.Generator().manual_seed(0))
    calls = [0]

    def batch_fn(split, generator):
        calls[0] += split == "train"
        if split == "train" and calls[0] == interrupt_at_call:  # Ctrl-C reaches this rank only, in the middle of a step
            os.kill(os.getpid(), signal.SIGINT)
        return causal_lm_batch(data, 4, 16, generator)

    torch.manual_seed(dp.rank_seed(0, dp.world()[0]))  # different starting weights: DDP must copy rank 0's
    model = GPT(TransformerConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=dropout))
    cfg = TrainConfig(steps=STEPS, lr=3e-3, warmup_steps=2, grad_accum=2, eval_interval=2, eval_batches=2,
                      progress=False)
    return Trainer(model, batch_fn, causal_lm_loss, cfg, device="cpu", distributed=distributed)


def _flat(trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]).clone()


def _checks(device, tmp: str) -> dict:
    """Everything the tests below assert, from one pair of processes."""
    from aigc_book.models.io import CheckpointError

    rank, _ = dp.world()
    tmp = Path(tmp)
    out = {"grads": data_parallel.ddp_gradients_match(device), "fsdp": data_parallel.fsdp_matches_ddp(device)}
    straight = _trainer()
    out["first_batch"] = straight.batch_fn("train", torch.Generator().set_state(straight.generator.get_state()))["idx"]
    straight.train()
    out["straight"], out["straight_loss"] = _flat(straight), straight.history["train_loss"]

    first = _trainer()
    first.train(until=3, checkpoint_dir=tmp / "ck", checkpoint_every=3)
    resumed = _trainer()
    resumed.load_checkpoint(tmp / "ck")
    resumed.train()
    out["resumed"] = _flat(resumed)

    interrupted = _trainer(interrupt_at_call=7 if rank == 1 else None)  # 7th train batch: step 4's first
    try:
        interrupted.train(checkpoint_dir=tmp / "ctrl-c")
        out["stopped_at"] = None
    except KeyboardInterrupt:
        out["stopped_at"] = interrupted.step
    again = _trainer()
    again.load_checkpoint(tmp / "ctrl-c")
    again.train()
    out["after_ctrl_c"] = _flat(again)

    if rank == 0:  # a checkpoint of two processes, resumed by one
        try:
            _trainer(distributed=False).load_checkpoint(tmp / "ck")
            out["alone"] = "loaded"
        except CheckpointError as err:
            out["alone"] = str(err)
    out["allreduce"] = data_parallel.measure_allreduce(1000, device, iters=2)
    out["timing"] = data_parallel.data_parallel_steps(device, batch=2, steps=2, rounds=1, check_gradients=False)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Rank 0's and rank 1's results of :func:`_checks`."""
    return data_parallel.run_in_processes(_checks, 2, args=(str(tmp_path_factory.mktemp("ddp")),))


# ---- DDP -----------------------------------------------------------------------------------------
@pytest.mark.torchrun
def test_ddp_gradients_equal_one_process_on_the_combined_batch(ranks):
    grads = ranks[0]["grads"]
    assert grads["grads_match"] and grads["max_abs_diff"] < 1e-12  # float64
    assert grads["max_abs_diff_own_batch"] > 1e-3  # one rank's own batch alone is not the same gradient
    assert ranks[1]["grads"] == grads  # every rank gets the verdict


@pytest.mark.torchrun
def test_ranks_draw_different_batches_but_hold_identical_weights(ranks):
    assert not torch.equal(ranks[0]["first_batch"], ranks[1]["first_batch"])
    assert torch.equal(ranks[0]["straight"], ranks[1]["straight"])  # bitwise, after 6 steps with dropout
    assert ranks[0]["straight_loss"] == ranks[1]["straight_loss"]  # the loss is averaged over ranks


@pytest.mark.torchrun
def test_two_process_resume_is_exact(ranks):
    for r in ranks:
        assert torch.equal(r["resumed"], r["straight"])


@pytest.mark.torchrun
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step_and_resumes_exactly(ranks):
    assert [r["stopped_at"] for r in ranks] == [4, 4]
    for r in ranks:
        assert torch.equal(r["after_ctrl_c"], r["straight"])


@pytest.mark.torchrun
def test_resuming_with_another_number_of_processes_is_refused(ranks):
    assert "written by 2 process(es) but resumed by 1" in ranks[0]["alone"]
    assert "resume with 2 processes" in ranks[0]["alone"]


@pytest.mark.torchrun
def test_timing_reports_efficiency_as_the_ratio_of_step_times(ranks):
    t = ranks[0]["timing"]
    assert ranks[1]["timing"] is None and t["world_size"] == 2 and t["global_batch"] == 4
    assert t["efficiency"] == pytest.approx(t["ms_per_step_1"] / t["ms_per_step_2"], abs=2e-3)
    assert t["tokens_per_s_2"] / (2 * t["tokens_per_s_1"]) == pytest.approx(t["efficiency"], abs=2e-3)
    assert t["weights_identical"] and t["threads_per_process"] == dp.threads_per_process(2)  # 2 cores: 1 each
    assert t["allreduce_bytes_per_step"] == data_parallel.allreduce_bytes_per_rank(t["params"], 4, 2) == 4 * t["params"]


@pytest.mark.torchrun
def test_measured_allreduce_reports_the_ring_bytes(ranks):
    a = ranks[0]["allreduce"]
    assert a["bytes"] == 4000 and a["bytes_per_rank"] == 4000.0 and a["seconds"] > 0
    assert a["bus_bandwidth"] == pytest.approx(a["bytes_per_rank"] / a["seconds"])


# ---- FSDP ----------------------------------------------------------------------------------------
@pytest.mark.torchrun
def test_fsdp_step_matches_ddp_and_keeps_half_the_weights_per_rank(ranks):
    f = ranks[0]["fsdp"]
    assert f["max_abs_change"] > 1e-4  # the step moved the weights...
    assert f["max_abs_diff"] <= 1e-12  # ...and FSDP moved them as DDP did (float64, one AdamW step)
    assert f["params_per_rank_fsdp"] + ranks[1]["fsdp"]["params_per_rank_fsdp"] >= f["params_full"]
    assert f["params_per_rank_fsdp"] <= 0.51 * f["params_full"]


# ---- torchrun and the command line ---------------------------------------------------------------
TORCHRUN_SECONDS = 240


def free_port() -> int:
    """A TCP port no one listens on now: the operating system picks it for a socket bound to port 0."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc_per_node 2 -m aigc_book ARGS`` and return what it printed.

    Each run meets on its own free port (the default, 29500, is shared by every test run on the machine:
    a second one waits there for the first one's processes), in its own process group; past
    ``TORCHRUN_SECONDS`` the whole group (torchrun and its workers) is killed and the test fails."""
    env = {k: v for k, v in os.environ.items() if k != dp.THREADS_ENV_VAR}  # let train-gpt pick the threads
    env["OMP_NUM_THREADS"] = "2"  # what a user may have set: torchrun then keeps it, train-gpt must not
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "aigc_book", *args]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TORCHRUN_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the session's group: torchrun and every worker it started
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun {' '.join(args[:1])} did not finish in {TORCHRUN_SECONDS} s; its process group was "
                    f"killed. Its last output:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--steps", "6",
        "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from aigc_book.text.corpora import python_docs_text

    path = tmp_path_factory.mktemp("text") / "docs.txt"
    path.write_text(python_docs_text()[:4000], encoding="utf-8")
    return path


@pytest.mark.torchrun
def test_torchrun_train_gpt_prints_one_json_line_and_writes_one_model(text_file, tmp_path):
    out = tmp_path / "run"
    result = torchrun("train-gpt", "--text", str(text_file), "--out", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2 and summary["global_batch"] == 8
    # cores // 2 at most (1 here), not OMP_NUM_THREADS=2: set at the start, and kept by the load follower
    assert 1 <= summary["threads"] <= dp.threads_per_process(2)
    assert summary["tokens_per_s"] == pytest.approx(8 * 16 * 1000 / summary["ms_per_iter"], rel=1e-3)
    log = json.loads((out / "train_log.json").read_text(encoding="utf-8"))
    assert log["result"] == summary and len(log["history"]["train_loss"]) == 6
    sample = subprocess.run([sys.executable, "-m", "aigc_book", "sample", "--model", str(out), "--prompt", "The ",
                             "--max-new-tokens", "10"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert sample.returncode == 0 and sample.stdout.startswith("The "), sample.stderr


@pytest.mark.torchrun
def test_torchrun_bad_flag_is_one_line_from_the_program(text_file, tmp_path):
    result = torchrun("train-gpt", "--text", str(text_file), "--out", str(tmp_path / "r"), *TINY, "--batch-size", "0")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("aigc-book:")]
    assert ours == ["aigc-book: error: --batch-size must be >= 1, got 0"]  # once, not once per process
    # torchrun's own report names a process that exited 2; the other one may already have been stopped by
    # torchrun when the first one failed (a race: both or one are listed)
    assert result.stderr.count("exitcode  : 2") >= 1
    assert not (tmp_path / "r" / "checkpoint").exists()


# ---- formulas and inputs (no processes) ----------------------------------------------------------
def ring_allreduce(buffers: list[list[float]]) -> tuple[list[list[float]], list[int]]:
    """A ring all-reduce written out (Patarasuk & Yuan 2009): p ranks, p chunks; returns the buffers
    after it and how many numbers each rank sent. An independent check of the byte formula."""
    p, n = len(buffers), len(buffers[0])
    bounds = [(n * i // p, n * (i + 1) // p) for i in range(p)]
    bufs, sent = [list(b) for b in buffers], [0] * p
    for phase in ("reduce-scatter", "all-gather"):
        for step in range(p - 1):
            messages = []
            for r in range(p):  # rank r sends one chunk to rank r + 1
                c = (r - step + (0 if phase == "reduce-scatter" else 1)) % p
                lo, hi = bounds[c]
                messages.append(((r + 1) % p, lo, bufs[r][lo:hi]))
                sent[r] += hi - lo
            for dst, lo, values in messages:
                for i, v in enumerate(values):
                    bufs[dst][lo + i] = bufs[dst][lo + i] + v if phase == "reduce-scatter" else v
    return bufs, sent


@pytest.mark.parametrize("p, n", [(2, 10), (3, 12), (4, 8), (1, 5)])
def test_allreduce_bytes_match_a_written_out_ring(p, n):
    buffers = [[float(r * 100 + i) for i in range(n)] for r in range(p)]
    out, sent = ring_allreduce(buffers)
    total = [sum(b[i] for b in buffers) for i in range(n)]
    assert all(b == total for b in out)  # it is an all-reduce...
    # ...sending what the formula says
    assert sent == [pytest.approx(data_parallel.allreduce_bytes_per_rank(n, 1, p))] * p


def test_allreduce_seconds_is_bytes_over_bandwidth_plus_latencies():
    assert data_parallel.allreduce_seconds(10**6, 4, 2, 1e9) == pytest.approx(4e-3)  # 2 * 1/2 * 4 MB at 1 GB/s
    assert data_parallel.allreduce_seconds(10**6, 2, 8, 1e9, latency_s=1e-5) == pytest.approx(
        2 * 7 / 8 * 2e6 / 1e9 + 14e-5)
    assert data_parallel.allreduce_seconds(10**6, 4, 1, 1e9, latency_s=1.0) == 0.0  # one process: nothing to send


@pytest.mark.parametrize("args, error, message", [
    ((10, 4, 0), ValueError, "world_size must be an int >= 1"),
    ((-1, 4, 2), ValueError, "n_params must be an int >= 0"),
    ((10, 0, 2), ValueError, "bytes_per_element must be a finite number > 0"),
    ((10.5, 4, 2), TypeError, "n_params must be an int"),
    ((10, 4, True), TypeError, "world_size must be an int"),
])
def test_allreduce_bytes_rejects_bad_inputs(args, error, message):
    with pytest.raises(error, match=message):
        data_parallel.allreduce_bytes_per_rank(*args)


def test_allreduce_seconds_rejects_bad_bandwidth_and_latency():
    with pytest.raises(ValueError, match="bandwidth_bytes_per_s must be a finite number > 0"):
        data_parallel.allreduce_seconds(10, 4, 2, 0)
    with pytest.raises(ValueError, match="latency_s must be a number >= 0"):
        data_parallel.allreduce_seconds(10, 4, 2, 1e9, latency_s=-1)


def test_torchrun_env_reads_the_launcher_variables():
    assert dp.torchrun_env({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h",
           "MASTER_PORT": "29500"}
    assert dp.torchrun_env(env) == dp.DistEnv(3, 4, 1, 2)
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT not set: start the processes with torchrun"):
        dp.torchrun_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK='x': expected a whole number"):
        dp.torchrun_env({**env, "RANK": "x"})
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        dp.torchrun_env({**env, "RANK": "4"})


def test_rank_seeds_keep_rank_0_and_never_collide_with_neighbouring_seeds():
    assert dp.rank_seed(1337, 0) == 1337
    seeds = {dp.rank_seed(s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200  # seed + rank would give only 53
    with pytest.raises(ValueError, match="rank must be >= 0"):
        dp.rank_seed(0, -1)


def test_processes_share_the_cores_and_pick_their_own_gpu():
    assert dp.threads_per_process(2, cores=2) == 1 and dp.threads_per_process(3, cores=16) == 5
    assert dp.process_device(dp.DistEnv(1, 2, 1, 2), "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="each process uses the GPU of its local rank"):
        dp.process_device(dp.DistEnv(0, 2, 0, 2), "cuda:1")
    with pytest.raises(ValueError, match="runs on cpu \\(gloo\\) or cuda \\(nccl\\)"):
        dp.process_device(dp.DistEnv(0, 2, 0, 2), "mps")
    assert dp.backend_for("cpu") == "gloo" and dp.backend_for("cuda:0") == "nccl"


def test_demo_rejects_bad_settings_before_starting_processes():
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        data_parallel.data_parallel_demo(steps=1)
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        data_parallel.run_in_processes(data_parallel.ddp_gradients_match, 2, device="mps")
