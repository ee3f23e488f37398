"""The capstone pipeline: stages, resuming after an interruption, the report card, the command, the measures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aigc_book import cli, files
from aigc_book.capstone import pipeline
from aigc_book.capstone.chat import ChatSession, load_chat_model
from aigc_book.capstone.conversations import encode_conversations, sample_conversations
from aigc_book.capstone.pipeline import STAGES, CapstoneConfig, StageMismatchError, run_pipeline
from aigc_book.capstone.scoring import FlopMeter, bits_per_byte, ngram_bits_per_byte
from aigc_book.efficiency.flops import count_flops
from aigc_book.generation import GenerationConfig
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.tasks import instructions
from aigc_book.tasks.sft import sft_batch
from aigc_book.text.chat_tokenizer import BPEChatTokenizer

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

TINY = dict(docs_chars=60_000, vocab_size=300, n_layer=1, n_head=2, n_embd=32, block_size=48, batch_size=8,
            pretrain_steps=20, conversations=200, sft_steps=20, rl_steps=2, pairs=64, rm_steps=5, eval_prompts=20)


def tiny(**changes) -> CapstoneConfig:
    return CapstoneConfig(**{**TINY, **changes})


def weights(out, stage: str) -> dict[str, torch.Tensor]:
    return GPT.from_pretrained(out / stage).state_dict()


def same_results(a: dict, b: dict) -> bool:
    """Every measured figure equal; time and FLOPs may differ (an interrupted run spends more)."""
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "flops", "rlhf")}  # noqa: E731
    return all(strip(a[s]) == strip(b[s]) for s in STAGES)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("capstone") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests it is compared with (one_cpu_thread): sums split alike, bit for bit
    try:
        report = run_pipeline(out, tiny())
    finally:
        torch.set_num_threads(before)
    return out, report


def test_every_stage_is_written_with_its_record(finished):
    out, report = finished
    for stage in STAGES:
        assert (out / stage / pipeline.STAGE_FILE).exists()
        assert not (out / f".{stage}.partial").exists()
    assert set(report["stages"]) == set(STAGES)
    text = (out / "report.md").read_text()
    assert "# Report card" in text and "after SFT" in text and "grpo" in text
    saved = json.loads((out / "report.json").read_text())
    assert saved["stages"]["sft"]["accuracy"] == report["stages"]["sft"]["accuracy"]
    for stage in ("pretrained", "sft", "tuned"):
        record = report["stages"][stage]
        assert record["flops"] > 0 and record["seconds"] > 0
        assert set(record["accuracy"]) == {"all", *instructions.KINDS}
        assert all(math.isfinite(v) for v in record["bits_per_byte"].values())


def test_the_chat_model_is_the_tuned_stage(finished):
    out, _ = finished
    model, tok = load_chat_model(out)
    assert torch.equal(model.state_dict()["transformer.wte.weight"], weights(out, "tuned")["transformer.wte.weight"])
    short = GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=5)
    reply = ChatSession(model, tok, short).reply("add 1+2")
    assert isinstance(reply, str)


def test_a_rerun_skips_finished_stages(finished, monkeypatch):
    out, report = finished

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(pipeline, "_train", no_training)
    monkeypatch.setattr(pipeline, "run_rlhf", no_training)
    assert run_pipeline(out, tiny())["stages"] == report["stages"]


def test_other_settings_are_refused_then_overwritten(finished, tmp_path):
    out, _ = finished
    with pytest.raises(StageMismatchError, match=r"pretrain_steps: 20 there, 21 now"):
        run_pipeline(out, tiny(pretrain_steps=21))
    with pytest.raises(StageMismatchError, match="rl_steps"):
        run_pipeline(out, tiny(rl_steps=3))


def test_a_stage_recorded_under_the_old_field_names_still_matches(tmp_path):
    """Runs made before the rename recorded batch, pretrain_iters, sft_iters and sft_ptx_batch."""
    settings = tiny()
    old = {new: old for old, new in pipeline.RENAMED_FIELDS.items()}
    for stage in ("pretrained", "sft"):
        saved = {old.get(k, k): v for k, v in settings.fingerprint(stage).items()}
        assert set(saved) != set(settings.fingerprint(stage))  # some fields carry their old names
        (tmp_path / stage).mkdir()
        (tmp_path / stage / pipeline.STAGE_FILE).write_text(json.dumps({"stage": stage, "settings": saved,
                                                                        "record": {"seconds": 1.0}}))
        assert pipeline._finished(tmp_path, stage, settings) == {"seconds": 1.0}
        with pytest.raises(StageMismatchError, match=r"sft_steps: 20 there, 21 now|pretrain_steps: 20 there, 21"):
            pipeline._finished(tmp_path, stage, tiny(pretrain_steps=21, sft_steps=21))


def _interrupt_after(stage: str, calls: int, monkeypatch):
    """Make the ``calls``-th batch drawn in ``stage``'s training raise KeyboardInterrupt, as Ctrl-C would."""
    original = pipeline._train
    count = {"n": 0}

    def train(model, work, batch_fn, config):
        def batches(split, g):
            count["n"] += 1
            if count["n"] == calls:
                raise KeyboardInterrupt
            return batch_fn(split, g)
        return original(model, work, batches if work.name == f".{stage}.partial" else batch_fn, config)

    monkeypatch.setattr(pipeline, "_train", train)


def _counting(method, calls: list):
    def wrapped(self):
        calls.append(1)
        return method(self)
    return wrapped


@pytest.mark.parametrize("stage", ["pretrained", "sft"])
@pytest.mark.slow
def test_interrupted_training_resumes_to_the_same_result(finished, tmp_path, monkeypatch, stage):
    reference, report = finished
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(stage, 9, m)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(out, tiny())
    assert (out / f".{stage}.partial" / "checkpoint").exists() and not (out / stage).exists()
    steps = []
    original = pipeline._train

    def counted(model, work, batch_fn, config):
        history = original(model, work, batch_fn, config)
        steps.append(len(history["step"]))  # the history is restored from the checkpoint, then extended
        return history

    with monkeypatch.context() as m:
        m.setattr(pipeline, "_train", counted)
        m.setattr(pipeline.Trainer, "_gradients", _counting(pipeline.Trainer._gradients, drawn := []))
        again = run_pipeline(out, tiny())
    full = TINY["pretrain_steps"] if stage == "pretrained" else TINY["sft_steps"]
    assert steps[0] == full and len(drawn) < full + (TINY["sft_steps"] if stage == "pretrained" else 0)
    assert same_results(again["stages"], report["stages"])
    for stage in ("pretrained", "sft", "tuned"):
        for name, tensor in weights(reference, stage).items():
            assert torch.equal(tensor, weights(out, stage)[name]), (stage, name)


@pytest.mark.slow
def test_interrupted_preference_tuning_starts_again_to_the_same_result(finished, tmp_path, monkeypatch):
    reference, report = finished
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(pipeline, "run_rlhf", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(out, tiny())
    assert (out / "sft").exists() and not (out / "tuned").exists()
    again = run_pipeline(out, tiny())
    assert same_results(again["stages"], report["stages"])
    for name, tensor in weights(reference, "tuned").items():
        assert torch.equal(tensor, weights(out, "tuned")[name]), name


def test_an_unfinished_stage_with_other_settings_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after("pretrained", 5, m)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(out, tiny())
    with pytest.raises(StageMismatchError, match="unfinished pretrained stage"):
        run_pipeline(out, tiny(batch_size=4))


@pytest.mark.parametrize("changes, message", [
    ({"method": "sft"}, "method must be one of"),
    ({"vocab_size": 100}, "vocab_size must be at least 256"),
    ({"n_embd": 30, "n_head": 4}, "must be a multiple of n_head"),
    ({"pretrain_lr": -1.0}, "pretrain_lr must be a positive number"),
    ({"rl_steps": 0}, "rl_steps must be a positive int"),
    ({"block_size": 16}, "block_size must be at least 32"),
    ({"bracket_share": 1.5}, "bracket_share"),
])
def test_bad_settings_are_one_clear_error(changes, message):
    with pytest.raises(ValueError, match=message):
        CapstoneConfig(**changes)


def test_cuda_settings_scale_up_and_flags_still_win():
    assert CapstoneConfig.for_device("cpu") == CapstoneConfig()
    big = CapstoneConfig.for_device("cuda")
    assert big.n_embd > CapstoneConfig().n_embd and big.pretrain_steps > CapstoneConfig().pretrain_steps
    assert CapstoneConfig.for_device("cuda", n_layer=2).n_layer == 2


# ---- the command ---------------------------------------------------------------------------------

TINY_FLAGS = ["--docs-chars", "60000", "--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
              "--block-size", "48", "--batch-size", "8", "--pretrain-steps", "20", "--conversations", "200",
              "--sft-steps", "20", "--rl-steps", "2", "--eval-prompts", "20", "--device", "cpu", "--no-progress"]


@pytest.mark.slow
def test_the_command_prints_one_json_line_then_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["tiny-chatgpt", "--out", str(out), *TINY_FLAGS]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["accuracy"]) == {"pretrained", "sft", "tuned"} and result["method"] == "grpo"
    assert (out / "report.md").exists()
    assert cli.main(["tiny-chatgpt", "--out", str(out), *TINY_FLAGS[:-3], "--pretrain-steps", "21", "--device",
                     "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "--overwrite" in err


@pytest.mark.parametrize("flags, message", [
    (["--n-layer", "0"], "--n-layer must be a positive int"),
    (["--n-embd", "30"], "--n-embd (30) must be a multiple of --n-head"),
    (["--method", "rlhf"], "--method must be one of"),
    (["--vocab-size", "10"], "--vocab-size must be at least 256"),
    (["--device", "tpu"], "--device"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path, capsys, flags, message):
    assert cli.main(["tiny-chatgpt", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert cli.main(["tiny-chatgpt", "--out", str(path), *TINY_FLAGS]) == 2
    assert "is a file" in capsys.readouterr().err


# ---- conversations and measures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    text = "the quick brown fox jumps over the lazy dog 0123456789 " * 50
    return BPEChatTokenizer.train(text, 280)


def test_only_assistant_turns_are_trained_on(tok):
    convs = [[instructions.Instruction("add", "add 1+2", "3"), instructions.Instruction("sort", "sort ba", "ab")]]
    data = encode_conversations(tok, convs)
    batch = sft_batch(data, 1, torch.Generator().manual_seed(0))
    trained = batch["targets"][0][batch["targets"][0] != -100].tolist()
    assert tok.decode(trained) == "3<|end|>ab<|end|>"


def test_long_conversations_keep_their_first_whole_turns(tok):
    conv = sample_conversations(1, seed=0, max_turns=1)[0] * 6
    with pytest.raises(ValueError, match="more than max_length"):
        encode_conversations(tok, [conv], max_length=30)
    data = encode_conversations(tok, [conv], max_length=30, truncate=True)
    ids = data.tokens[0][data.real_mask[0]].tolist()
    assert len(ids) <= 30 and ids[-1] == tok.end_id and ids.count(tok.user_id) == ids.count(tok.end_id) // 2


def test_conversations_avoid_excluded_prompts():
    held = instructions.sample_instructions(50, seed=3, config=instructions.InstructionConfig(kinds=("sort",)))
    convs = sample_conversations(300, seed=1, max_turns=3, exclude=held)
    assert not {t.prompt for c in convs for t in c} & {h.prompt for h in held}
    assert all(1 <= len(c) <= 3 for c in convs)


def test_bits_per_byte_is_the_summed_loss_over_the_bytes(tok):
    torch.manual_seed(0)
    model = GPT(TransformerConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    text = "the lazy dog jumps over the quick brown fox " * 4
    ids = torch.tensor(tok.encode(text, allow_special=False))
    n = (len(ids) - 1) // 16
    nats = sum(torch.nn.functional.cross_entropy(model(ids[i * 16 : i * 16 + 16][None]).logits[0],
                                                 ids[i * 16 + 1 : i * 16 + 17], reduction="sum").item()
               for i in range(n))
    covered = len(tok.decode(ids[1 : n * 16 + 1].tolist()).encode())
    assert bits_per_byte(model, tok, text) == pytest.approx(nats / math.log(2) / covered, rel=1e-5)


def test_the_byte_ngram_knows_english_better_than_uniform():
    text = "the quick brown fox jumps over the lazy dog. " * 200
    bits = ngram_bits_per_byte(text, {"same": text[:500], "other": "zqxj" * 100})
    assert bits["same"] < 1.0 < 8.0 < bits["other"] + 8.0 and bits["other"] > bits["same"]


def test_the_flop_meter_agrees_with_pytorchs_counter_on_a_training_step():
    torch.manual_seed(0)
    model = GPT(TransformerConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64))
    x = torch.randint(0, 64, (4, 32))
    with FlopMeter() as meter:
        model(x, targets=x).loss.backward()
    counted = count_flops(lambda: model(x, targets=x).loss.backward())
    assert meter.tokens == 128
    assert meter.flops == pytest.approx(counted, rel=0.1)  # ours counts the causal half of attention


def test_the_flop_meter_counts_generation_with_the_cache_at_its_context_length():
    torch.manual_seed(0)
    model = GPT(TransformerConfig(vocab_size=32, block_size=16, n_layer=1, n_head=1, n_embd=16))
    with FlopMeter() as meter:
        model.generate(torch.zeros(1, 4, dtype=torch.long), 3)
    expected = 4 * model.flops_per_token(4, output_layer=True) + sum(
        model.flops_per_token(t, output_layer=True) for t in (5, 6))
    assert meter.tokens == 6 and meter.flops == pytest.approx(expected)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
    assert meter.tokens == 6  # nothing counted after the block


@pytest.mark.slow
def test_until_stops_after_a_stage_and_a_later_call_goes_on(finished, tmp_path, monkeypatch):
    reference, report = finished
    out = tmp_path / "run"
    first = run_pipeline(out, tiny(), until="sft")
    assert set(first["stages"]) == {"tokenizer", "pretrained", "sft"} and not (out / "tuned").exists()
    text = (out / "report.md").read_text()
    assert "after SFT" in text and "after preference tuning" not in text
    with monkeypatch.context() as m:
        m.setattr(pipeline, "_train", lambda *a, **k: pytest.fail("a finished stage trained again"))
        again = run_pipeline(out, tiny())
    assert same_results(again["stages"], report["stages"])
    with pytest.raises(ValueError, match="until must be one of"):
        run_pipeline(out, tiny(), until="chat")


def test_ctrl_c_in_the_command_is_exit_130_with_how_to_continue(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_pipeline", interrupted)
    assert cli.main(["tiny-chatgpt", "--out", str(tmp_path / "run"), *TINY_FLAGS]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err


@pytest.mark.slow
def test_a_stage_killed_before_its_rename_is_finished_by_a_rerun(finished, tmp_path, monkeypatch):
    reference, report = finished
    out = tmp_path / "run"
    real_replace = files.os.replace  # the rename of replace_directory, which commits a stage

    def killed(src, dst):
        if str(dst).endswith("sft"):
            raise KeyboardInterrupt  # as if the process died between writing stage.json and the rename
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(files.os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(out, tiny())
    assert (out / ".sft.partial" / pipeline.STAGE_FILE).exists() and not (out / "sft").exists()
    assert same_results(run_pipeline(out, tiny())["stages"], report["stages"])


@pytest.mark.slow
def test_an_empty_work_directory_left_by_a_kill_is_started_afresh(finished, tmp_path):
    reference, report = finished
    out = tmp_path / "run"
    (out / ".tokenizer.partial").mkdir(parents=True)  # killed between mkdir and its settings file
    assert same_results(run_pipeline(out, tiny())["stages"], report["stages"])


def test_the_flop_meter_leaves_no_global_hook_behind():
    with FlopMeter():
        pass
    assert not torch.nn.modules.module._has_any_global_hook()
