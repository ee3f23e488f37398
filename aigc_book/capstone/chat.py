"""Talk to a chat model: a multi-turn session, a terminal chat and a Jupyter chat widget.

Introduced in chapter 8, section "Talking to it". A conversation is the chat template of
:mod:`aigc_book.tasks.sft` repeated turn after turn::

    <|user|>m1<|end|><|assistant|>r1<|end|><|user|>m2<|end|><|assistant|>

and the model continues it until it writes ``<|end|>``. That is all a chat is: the model sees the
whole conversation again at every turn (the "memory" of a chatbot is its context window), which is
how InstructGPT's and ChatGPT's dialogue format works (Ouyang et al. 2022, arXiv:2203.02155).

What a real chat front end must also handle, and :class:`ChatSession` does:

* **Typed text stays text.** Messages are encoded with ``allow_special=False``, so a typed
  ``<|end|>`` is seven characters, never the end-of-turn token (the "prompt injection through
  special tokens" that chat templates guard against).
* **The context is finite.** When the conversation no longer fits in ``block_size`` tokens, the
  oldest *whole* turns are dropped (a turn cut in half would start the context in the middle of a
  reply) and :attr:`ChatSession.dropped_turns` counts them. A quarter of the context (at least
  :data:`MIN_REPLY_TOKENS`, at most ``max_new_tokens``) is kept free for the reply; the reply is
  capped by the room that is left, so the conversation (its closing ``<|end|>`` included) never
  holds more than ``block_size`` tokens and the KV cache never has to slide.
* **Streaming.** Tokens are decoded as they arrive; the reply decoded so far is compared with what
  was already shown, so a character whose UTF-8 bytes are split across byte-level BPE tokens is
  shown once it is complete, never as a broken one.
* **A reply ends at ``<|end|>``**, or at any other special token: a model that starts writing the
  user's turn has finished its own. The turn is closed with ``<|end|>`` either way, so the context
  is always exactly the template of the turns kept.
* **Reproducible.** Each session owns a seeded ``torch.Generator``: the same seed and the same
  messages give the same conversation.

:func:`load_chat_model` finds the model in a ``finetune`` output or in a ``tiny-chatgpt`` run
directory (its ``tuned/`` model, else its ``sft/`` one); :func:`run_terminal_chat` is the REPL of
``python -m aigc_book chat``; :func:`chat_widget` the same conversation as an ipywidgets UI.
"""

from __future__ import annotations

import html
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from aigc_book.checks import is_int
from aigc_book.generation.config import GenerationConfig
from aigc_book.generation.search import generate
from aigc_book.models.gpt import GPT
from aigc_book.models.io import CONFIG_FILE
from aigc_book.text.load import load_tokenizer
from aigc_book.text.tokenizer import TOKENIZER_FILE

__all__ = [
    "CHAT_MODEL_SUBDIRS",
    "CHAT_MODEL_TOKENIZERS",
    "MIN_REPLY_TOKENS",
    "CHAT_GENERATION_CONFIG",
    "load_chat_model",
    "ChatSession",
    "run_terminal_chat",
    "ChatWidget",
    "chat_widget",
]

# A character tokenizer is read too, to say that its train-gpt model must be fine-tuned first.
CHAT_MODEL_TOKENIZERS = ("chat", "bpe_chat", "char")
CHAT_MODEL_SUBDIRS = ("tuned", "sft")  # where `tiny-chatgpt --out DIR` keeps its chat models, best first
MIN_REPLY_TOKENS = 4  # a message must leave at least this much of the context for the reply
MAKE_ONE = "python -m aigc_book tiny-chatgpt --out DIR, or python -m aigc_book finetune --model DIR ... --out DIR"
SHOWN_CHARACTERS = 10  # how many unknown characters an error names


CHAT_GENERATION_CONFIG = GenerationConfig(do_sample=True, temperature=0.8, max_new_tokens=64)
"""How replies are drawn unless a session is given another :class:`GenerationConfig`: sampling at
temperature 0.8 with no filter, at most 64 tokens a reply (the context may allow fewer)."""
# what summary() reports of the generation config
SUMMARY_FIELDS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens")


def _check_chat_config(config) -> GenerationConfig:
    """``config`` if a chat can reply with it: one row, streamed, ending at the chat's own stop tokens."""
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"generation_config must be a GenerationConfig, got {type(config).__name__}")
    if config.max_new_tokens is None or config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {config.max_new_tokens!r}")
    if config.num_beams != 1 or config.num_return_sequences != 1:
        raise ValueError(f"a chat streams one reply: num_beams and num_return_sequences must be 1, got "
                         f"{config.num_beams} and {config.num_return_sequences}")
    if config.eos_token_id is not None:
        raise ValueError(f"a reply ends at the chat's special tokens: leave eos_token_id None, got "
                         f"{config.eos_token_id!r}")
    return config


# ----------------------------------------------------------------------------- loading


def _model_directory(directory: Path) -> Path:
    """``directory`` itself when it holds a model, else its ``tuned/`` or ``sft/`` model."""
    if not directory.is_dir():
        raise ValueError(f"{directory}: no such directory (make a chat model first: {MAKE_ONE})")
    if (directory / CONFIG_FILE).is_file():
        return directory
    for name in CHAT_MODEL_SUBDIRS:
        if (directory / name / CONFIG_FILE).is_file():
            return directory / name
    raise ValueError(f"{directory}: holds no model ({CONFIG_FILE}), nor a tiny-chatgpt run's "
                     f"{' or '.join(n + '/' for n in CHAT_MODEL_SUBDIRS)}; make one: {MAKE_ONE}")


def _is_chat_tokenizer(tokenizer) -> bool:
    return all(hasattr(tokenizer, name) for name in ("user_id", "assistant_id", "end_id"))


def _stop_ids(tokenizer) -> list[int]:
    """``<|end|>`` first, then every other special token: a model that starts the user's turn (or any
    other special) has finished its own, and a reply's text never holds a special token."""
    others = [getattr(tokenizer, name, None) for name in ("user_id", "assistant_id", "pad_id")]
    return [tokenizer.end_id, *dict.fromkeys(i for i in others if i is not None and i != tokenizer.end_id)]


def load_chat_model(directory, *, device=None) -> tuple[GPT, object]:
    """The chat model and its tokenizer from ``directory``, in eval mode on ``device``.

    ``directory`` is a model directory (``GPT.save_pretrained`` files plus ``tokenizer.json``, as
    ``finetune`` writes it) or a ``tiny-chatgpt --out`` directory, whose chat model is ``tuned/``
    (``sft/`` when there is no ``tuned/``). Every problem is a one-line ValueError that says what to do.
    """
    root = Path(directory)
    where = _model_directory(root)
    tokenizer = load_tokenizer(where / TOKENIZER_FILE, types=CHAT_MODEL_TOKENIZERS)
    if not _is_chat_tokenizer(tokenizer):
        raise ValueError(f"{where}: a train-gpt model (its tokenizer has no chat tokens <|user|>, <|end|>); "
                         f"fine-tune it first: python -m aigc_book finetune --model {root} --data PAIRS.jsonl "
                         "--method lora --out CHAT_DIR")
    model = GPT.from_pretrained(where, device=device)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"{where}: {TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model has "
                         f"{model.config.vocab_size} outputs; they come from different runs")
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- the session


@dataclass(frozen=True)
class _Turn:
    user: str
    assistant: str
    ids: tuple[int, ...]  # <|user|>user<|end|><|assistant|>reply<|end|>, the reply's ids as generated


class _Stream:
    """Turns generated ids into text pieces: decode the reply so far, emit what is new.

    A trailing U+FFFD is held back: with byte-level BPE it is usually a character whose remaining
    bytes are still to come. The first special token ends the reply (and is not part of it).
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.stop = set(_stop_ids(tokenizer))
        self.ids: list[int] = []
        self.shown = ""
        self.ended = False

    def __call__(self, token: torch.Tensor) -> None:
        token_id = int(token[0])
        if self.ended:
            return
        if token_id in self.stop:
            self.ended = True
            return
        self.ids.append(token_id)
        self._emit(self.text().rstrip("\ufffd"))

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special=True)

    def finish(self) -> str:
        text = self.text()
        self._emit(text)
        return text

    def _emit(self, text: str) -> None:
        if self.on_text is not None and text.startswith(self.shown) and len(text) > len(self.shown):
            self.on_text(text[len(self.shown):])
        if text.startswith(self.shown):
            self.shown = text


class ChatSession:
    """A multi-turn conversation with a chat model.

    Args:
        model: a GPT fine-tuned on the chat template (see :func:`load_chat_model`).
        tokenizer: its tokenizer: ``encode(text, allow_special=False)``, ``decode(ids, skip_special=True)``,
            ``user_id``, ``assistant_id``, ``end_id``, ``vocab_size``.
        generation_config: how replies are drawn (default :data:`CHAT_GENERATION_CONFIG`); one row,
            no beams, no ``eos_token_id`` (a reply ends at the chat's special tokens), ``max_new_tokens``
            >= 1. With ``use_cache`` (the default) through the KV cache: the same tokens as without
            it, far fewer FLOPs.
        seed: seeds this session's generator (and again on :meth:`reset`).

    >>> session = ChatSession(model, tokenizer)           # doctest: +SKIP
    >>> session.reply("add 2+3")                          # doctest: +SKIP
    '5'
    """

    def __init__(self, model: GPT, tokenizer, generation_config: GenerationConfig | None = None, *,
                 seed: int = 0) -> None:
        config = _check_chat_config(CHAT_GENERATION_CONFIG if generation_config is None else generation_config)
        if not _is_chat_tokenizer(tokenizer):
            raise ValueError("the tokenizer has no chat tokens (user_id, assistant_id, end_id): fine-tune the "
                             "model first (python -m aigc_book finetune)")
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model has "
                             f"{model.config.vocab_size} outputs; they do not belong together")
        if not is_int(seed) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.model, self.tokenizer, self.generation_config, self.seed = model, tokenizer, config, seed
        self.device = next(model.parameters()).device
        self.block_size = model.config.block_size
        if self._room(3) - self._min_reply() < 1:  # not even a one-token message with the template and a reply
            raise ValueError(f"a context of {self.block_size} tokens is too short to chat; "
                             f"it needs at least {self._min_reply() + 5}")
        self.reset()

    def reset(self) -> None:
        """Forget the conversation and re-seed: the same messages give the same replies again."""
        self._turns: list[_Turn] = []
        self.dropped_turns = 0  # the oldest turns that no longer fit in the context
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)

    @property
    def history(self) -> list[tuple[str, str]]:
        """Every ``(user, assistant)`` turn of the conversation, dropped ones included."""
        return [(t.user, t.assistant) for t in self._turns]

    @property
    def turns(self) -> int:
        return len(self._turns)

    def context_ids(self) -> list[int]:
        """The ids of the turns the model still sees (the conversation minus the dropped turns)."""
        return [i for t in self._turns[self.dropped_turns:] for i in t.ids]

    def check_message(self, message: str) -> list[int]:
        """The template ids ``<|user|>message<|end|><|assistant|>``, or a one-line ValueError saying
        why ``message`` cannot be sent."""
        if not isinstance(message, str):
            raise ValueError(f"a message must be a str, got {type(message).__name__}")
        if not message.strip():
            raise ValueError("the message is empty; type some text")
        t = self.tokenizer
        try:
            ids = t.encode(message, allow_special=False)
        except ValueError:
            raise ValueError(self._unknown_characters(message)) from None
        prompt = [t.user_id, *ids, t.end_id, t.assistant_id]
        longest = self._room(0) - self._min_reply() - 3  # 3: <|user|>, <|end|>, <|assistant|>
        if self._room(len(prompt)) < self._min_reply():
            raise ValueError(f"the message is {len(ids)} tokens, but the model reads at most {self.block_size} and "
                             f"needs room for the template and a reply: shorten it to {longest} tokens or fewer")
        return prompt

    def reply(self, message: str, *, on_text: Callable[[str], None] | None = None) -> str:
        """Send ``message``, return the model's reply; ``on_text(piece)`` receives the reply as it is
        generated. On a bad message (ValueError) or an interruption the conversation is unchanged."""
        prompt = self.check_message(message)
        dropped = self._turns_to_drop(len(prompt))
        context = [i for t in self._turns[dropped:] for i in t.ids] + prompt
        stream = _Stream(self.tokenizer, on_text)
        generate(self.model, torch.tensor([context], device=self.device), self.generation_config,
                 max_new_tokens=min(self.generation_config.max_new_tokens, self._room(len(context))),
                 eos_token_id=_stop_ids(self.tokenizer), generator=self.generator, on_token=stream)
        text = stream.finish()
        turn_ids = (*prompt, *stream.ids, self.tokenizer.end_id)  # closed by <|end|> however it stopped
        self._turns.append(_Turn(message, text, turn_ids))
        self.dropped_turns = dropped
        return text

    def _room(self, context_len: int) -> int:
        """Reply tokens that fit after ``context_len`` tokens, keeping one for a closing ``<|end|>``
        (a reply cut short is closed too), so a stored conversation never exceeds ``block_size``."""
        return self.block_size - context_len - 1

    def _min_reply(self) -> int:
        return min(MIN_REPLY_TOKENS, self.generation_config.max_new_tokens)

    def _turns_to_drop(self, prompt_len: int) -> int:
        """How many of the oldest turns leave the context so that it holds ``prompt_len`` more tokens
        and room for the reply (a quarter of the context, within [MIN_REPLY_TOKENS, max_new_tokens])."""
        longest = self.generation_config.max_new_tokens
        room = min(longest, max(MIN_REPLY_TOKENS, self.block_size // 4), self._room(prompt_len))
        lengths = [len(t.ids) for t in self._turns]
        dropped, kept = self.dropped_turns, sum(lengths[self.dropped_turns:])
        while dropped < len(lengths) and self._room(kept + prompt_len) < room:
            kept -= lengths[dropped]
            dropped += 1
        return dropped

    def _unknown_characters(self, message: str) -> str:
        unknown = []
        for c in dict.fromkeys(message):  # distinct, in order of appearance
            try:
                self.tokenizer.encode(c, allow_special=False)
            except ValueError:
                unknown.append(c)
        if not unknown:  # a tokenizer that refuses the text but each character of it
            return "the model's tokenizer cannot encode this message"
        named = ", ".join(repr(c) for c in unknown[:SHOWN_CHARACTERS])
        more = f" and {len(unknown) - SHOWN_CHARACTERS} more" if len(unknown) > SHOWN_CHARACTERS else ""
        return f"the model's tokenizer does not know the characters {named}{more}; write without them"

    def summary(self) -> dict:
        """The conversation as JSON-ready data (what ``python -m aigc_book chat --message`` prints)."""
        return {"turns": [{"user": u, "assistant": a} for u, a in self.history],
                "dropped_turns": self.dropped_turns, "context_tokens": len(self.context_ids()),
                "block_size": self.block_size, "seed": self.seed,
                "settings": {name: getattr(self.generation_config, name) for name in SUMMARY_FIELDS}}


# ----------------------------------------------------------------------------- the terminal


QUIT, RESET = "/quit", "/reset"


def _dropped_notice(n: int, block_size: int) -> str:
    return f"(the oldest {n} turn{'s' if n != 1 else ''} no longer fit the model's {block_size}-token context and " \
           f"{'were' if n != 1 else 'was'} dropped)"


def run_terminal_chat(session: ChatSession, *, input_stream: TextIO | None = None, output: TextIO | None = None) -> int:
    """Chat in a terminal: ``you> `` reads a message, ``bot> `` streams the reply. ``/reset`` starts a
    new conversation; ``/quit``, end of input (Ctrl-D) or Ctrl-C end it. A bad message prints one
    ``error: ...`` line and the chat goes on. Returns the exit status, 0."""
    input_stream = sys.stdin if input_stream is None else input_stream
    output = sys.stdout if output is None else output

    def say(text: str = "", end: str = "\n") -> None:
        output.write(text + end)
        output.flush()

    say(f"Type a message and press Enter; {RESET} starts a new conversation, {QUIT} (or Ctrl-D) ends it.")
    try:
        while True:
            say("you> ", end="")
            line = input_stream.readline()
            if not line:  # end of input
                say()
                return 0
            message = line.rstrip("\r\n")
            if message.strip() == QUIT:
                return 0
            if message.strip() == RESET:
                session.reset()
                say("(a new conversation)")
                continue
            try:
                session.check_message(message)
            except ValueError as err:
                say(f"error: {err}")
                continue
            before = session.dropped_turns
            say("bot> ", end="")
            session.reply(message, on_text=lambda piece: say(piece, end=""))
            say()
            if session.dropped_turns > before:
                say(_dropped_notice(session.dropped_turns - before, session.block_size))
    except KeyboardInterrupt:  # Ctrl-C: a reply being generated is not kept
        say()
        return 0


# ----------------------------------------------------------------------------- the widget


class ChatWidget:
    """A chat UI for Jupyter: a transcript, a text box (Enter sends), Send and Reset buttons.

    The handlers :meth:`send` and :meth:`reset` are ordinary methods, so tests call them without a
    browser; :attr:`box` is the widget to display (a notebook shows a ``ChatWidget`` as its box).
    """

    def __init__(self, session: ChatSession) -> None:
        import ipywidgets as widgets

        self.session = session
        self.lines: list[tuple[str, str]] = []  # (role, text); role is "you", "bot", "error" or "note"
        self.transcript = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.text = widgets.Text(placeholder="Type a message and press Enter",
                                 layout=widgets.Layout(flex="1 1 auto"))
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.reset_button = widgets.Button(description="Reset")
        with warnings.catch_warnings():  # ipywidgets 8 deprecates on_submit, but it is still the one Enter event
            warnings.simplefilter("ignore", DeprecationWarning)
            self.text.on_submit(lambda _: self.send())
        self.send_button.on_click(lambda _: self.send())
        self.reset_button.on_click(lambda _: self.reset())
        self.box = widgets.VBox([self.transcript, widgets.HBox([self.text, self.send_button, self.reset_button])])
        self._render()

    def send(self, message: str | None = None) -> str | None:
        """Send ``message`` (default: the text box's), streaming the reply into the transcript;
        returns the reply, or None when the message was refused (an error line says why)."""
        message = self.text.value if message is None else message
        before = self.session.dropped_turns
        try:
            self.session.check_message(message)
        except ValueError as err:
            self._add("error", f"error: {err}")
            return None
        self.text.value = ""
        self._add("you", message)
        self._add("bot", "")
        self.send_button.disabled = True
        try:
            reply = self.session.reply(message, on_text=self._append_to_reply)
        except BaseException:  # interrupted: the session kept nothing, nor does the transcript
            del self.lines[-2:]
            self._render()
            raise
        finally:
            self.send_button.disabled = False
        self.lines[-1] = ("bot", reply)
        if self.session.dropped_turns > before:
            self._add("note", _dropped_notice(self.session.dropped_turns - before, self.session.block_size))
        self._render()
        return reply

    def reset(self) -> None:
        """Start a new conversation."""
        self.session.reset()
        self.lines = []
        self._render()

    def _append_to_reply(self, piece: str) -> None:
        role, text = self.lines[-1]
        self.lines[-1] = (role, text + piece)
        self._render()

    def _add(self, role: str, text: str) -> None:
        self.lines.append((role, text))
        self._render()

    STYLE = {"you": "font-weight:bold", "bot": "", "error": "color:#b00020", "note": "color:#666;font-style:italic"}

    def _render(self) -> None:
        rows = [f'<div style="{self.STYLE[role]}">{html.escape(role + "> " if role in ("you", "bot") else "")}'
                f"{html.escape(text)}</div>" for role, text in self.lines]
        self.transcript.value = "".join(rows) or '<div style="color:#666">(no messages yet)</div>'

    def _repr_mimebundle_(self, **kwargs):  # a notebook displays the box
        return self.box._repr_mimebundle_(**kwargs)


def chat_widget(session: ChatSession) -> ChatWidget:
    """An ipywidgets chat UI for ``session`` (display it in a notebook cell)."""
    return ChatWidget(session)
