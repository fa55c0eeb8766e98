"""Answering prompts about images with a saved VLM: the engine behind ``vlm chat``.

The pieces, from small to large:

- ``user_content`` / ``chat_messages`` / ``question_prompt``: the one place a question, its
  images and the history become chat messages (``<image>`` marks in user turns, as in LLaVA's
  data) and prompt text;
- ``generate``: chat-formatted prompts -> replies, batched with left padding, optionally
  streamed, each shared prefix run once (``vlm.shared_prefix``); it refuses a prompt that does
  not fit the model's context;
- ``answer_once``: one question about some images;
- ``ChatSession``: a multi-turn conversation (history rendered each turn, its KV cache kept
  across turns, images kept with the turn they came in), savable in the training SFT format;
- ``chat_loop``: the interactive ``/image``, ``/reset``, ``/save`` prompt on top of a session.

``vlm.predict`` builds batched answering of question files on the same pieces.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from PIL import Image
from torch import nn
from transformers import StoppingCriteriaList, TextStreamer
from transformers.generation.streamers import BaseStreamer

from vision import load_image
from vlm.atomic import atomic_write_json
from vlm.loading import load_model
from vlm.precision import inference_dtype
from vlm.processing import VLMProcessor
from vlm.shared_prefix import ConversationCache, generate_sharing_prefixes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

ImageInput = str | os.PathLike | Image.Image
"""An image file path, or an image already decoded."""


class ContextLengthError(ValueError):
    """A prompt (image placeholders included) that leaves the model no room to answer."""


def load_for_chat(
    model_dir: str | os.PathLike, device: str | None = None, dtype: str | None = None
) -> tuple[nn.Module, VLMProcessor]:
    """Load a saved/merged VLM, a LoRA training output or checkpoint, or a run folder, for inference.

    ``dtype`` defaults to bf16 weights where the device multiplies bf16 fast (a GPU with bf16,
    a CPU with AMX), else fp32 (``vlm.precision``).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or inference_dtype(device)
    return load_model(model_dir, dtype=DTYPES[dtype], device=device)


# --- prompts ------------------------------------------------------------------------------------


def user_content(text: str, num_images: int, image_token: str = "<image>") -> str:
    """A user turn's text with one ``<image>`` mark per image.

    Without marks, the images go first, each on its own line, as in LLaVA's data; marks the
    user typed are kept where they are and must match the number of images.
    """
    check_text(text, "the prompt")
    marks = text.count(image_token)
    if marks == 0:
        return (image_token + "\n") * num_images + text
    if marks != num_images:
        images = f"{num_images} image{'s' if num_images != 1 else ''}"
        raise ValueError(
            f"the prompt has {marks} {image_token} marks but {images} attached; "
            "give one image per mark, or no marks to put the images first"
        )
    return text


_UNDECODABLE = re.compile("[\ud800-\udfff]")


def check_text(text: str, what: str) -> None:
    """Raise ValueError if ``text`` holds a lone surrogate: bytes that were not UTF-8 (read with
    ``surrogateescape``) or a JSON ``\\udc80`` escape. The tokenizer cannot encode them."""
    found = _UNDECODABLE.search(text)
    if found:
        raise ValueError(
            f"{what} is not valid UTF-8 text: character {found.start()} is U+{ord(found.group()):04X}, an undecodable byte "
            "or a lone surrogate; fix the encoding (UTF-8) and send it again"
        )


def chat_messages(
    content: str, system: str | None = None, history: Sequence[tuple[str, str]] = ()
) -> list[dict[str, str]]:
    """Chat messages for a new user turn ``content`` after ``history``'s (user content, answer) pairs."""
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": content}]


def question_prompt(processor: VLMProcessor, question: str, num_images: int, system: str | None = None) -> str:
    """The chat-formatted prompt for one question about ``num_images`` images (a conversation of one turn)."""
    content = user_content(question, num_images, processor.image_token)
    return processor.apply_chat_template(chat_messages(content, system))


def context_length(model: nn.Module) -> int | None:
    """The LLM's position limit (``text_config.max_position_embeddings``), or None if it has none."""
    text_config = getattr(model.config, "text_config", None)
    return getattr(text_config, "max_position_embeddings", None)


def prompt_length(processor: VLMProcessor, prompt: str) -> int:
    """Tokens in a chat-formatted prompt, with each ``<image>`` counted as its placeholder tokens."""
    return len(processor.tokenizer(processor.expand_image_tokens(prompt), add_special_tokens=False)["input_ids"])


def check_prompt_length(num_tokens: int, limit: int | None) -> None:
    """Raise ``ContextLengthError`` if a prompt of ``num_tokens`` leaves no room for one new token."""
    if limit is not None and num_tokens >= limit:
        raise ContextLengthError(
            f"the prompt is {num_tokens} tokens (each image counts as its placeholder tokens) but the model's "
            f"context is {limit} tokens; shorten it"
        )


# --- generation ---------------------------------------------------------------------------------


def generation_kwargs(temperature: float = 0.0, top_p: float = 1.0) -> dict[str, Any]:
    """``generate`` sampling arguments: greedy when ``temperature`` is 0, else temperature + nucleus sampling."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}


class _Streamer(TextStreamer):
    """TextStreamer that writes to a given stream instead of print()."""

    def __init__(self, tokenizer, stream: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


def generate(
    model: nn.Module,
    processor: VLMProcessor,
    prompts: Sequence[str],
    images: Sequence[Sequence[Image.Image]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stream: TextIO | None = None,
    share_prefix: bool = True,
    conversation: ConversationCache | None = None,
    streamer: BaseStreamer | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
) -> list[str]:
    """Replies to chat-formatted ``prompts`` (one list of images each), generated as one left-padded batch.

    ``seed`` reseeds torch first when given. ``stream`` (batches of one only) receives the
    reply token by token, then a newline. Generation stops at the model's context length.
    ``share_prefix`` (default) runs the prefix that prompts with the same images share (system
    text, image tokens, ...) once through the KV cache (``vlm.shared_prefix``); off, every
    prompt runs whole, as a plain ``generate``. ``conversation`` (one prompt) continues from the
    tokens it holds instead, and keeps this turn's for the next.
    ``streamer`` and ``stopping_criteria`` go to ``model.generate`` as they are (the server's
    per-row streaming and cancelling of a batch, which need the batch's rows in one plain
    ``generate``: prefix sharing is off then); ``streamer`` and ``stream`` exclude each other.
    """
    if stream is not None and len(prompts) != 1:
        raise ValueError(f"streaming works on one prompt at a time, got {len(prompts)}")
    if stream is not None and streamer is not None:
        raise ValueError("give stream or streamer, not both")
    sampling = generation_kwargs(temperature, top_p)
    inputs = processor(text=list(prompts), images=[list(group) for group in images])
    limit = context_length(model)
    for num_tokens in inputs["attention_mask"].sum(dim=1).tolist():
        check_prompt_length(num_tokens, limit)
    prompt_tokens = inputs["input_ids"].shape[1]  # [B, L], left-padded to the longest prompt
    if limit is not None:
        max_new_tokens = min(max_new_tokens, limit - prompt_tokens)
    if seed is not None:
        torch.manual_seed(seed)
    per_row = streamer is not None or stopping_criteria is not None
    options = {
        "max_new_tokens": max_new_tokens,
        "streamer": _Streamer(processor.tokenizer, stream) if stream is not None else streamer,
        **sampling,
    }
    if conversation is not None and not per_row:
        new_tokens = conversation.generate(model, processor, inputs, **options)
    elif share_prefix and not per_row:
        new_tokens = generate_sharing_prefixes(model, processor, inputs, **options)
    else:
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        output = model.generate(
            **inputs,
            pad_token_id=processor.tokenizer.pad_token_id,  # the processor always sets one; silences generate's warning
            stopping_criteria=stopping_criteria,
            **options,
        )
        new_tokens = output[:, prompt_tokens:]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)


def as_image(image: ImageInput) -> Image.Image:
    """A decoded image as it is; a file through ``load_image`` (``ImageLoadError`` if unusable)."""
    return image if isinstance(image, Image.Image) else load_image(image)


def answer_once(
    model: nn.Module,
    processor: VLMProcessor,
    prompt: str,
    images: Sequence[ImageInput] = (),
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stream: TextIO | None = None,
) -> str:
    """Answer one prompt about ``images``; stream the reply token by token to ``stream`` if given.

    ``<image>`` in the prompt marks where each image goes; without marks the images come
    first, each on its own line, as in LLaVA's data.
    """
    pictures = [as_image(image) for image in images]
    text = question_prompt(processor, prompt, len(pictures), system)
    return generate(model, processor, [text], [pictures], max_new_tokens, temperature, top_p, seed, stream)[0]


# --- conversations ------------------------------------------------------------------------------


@dataclass
class Turn:
    """One answered user turn."""

    content: str
    """The user's text with one ``<image>`` mark per image."""
    image_paths: list[Path]
    """Absolute paths of the images given with this turn."""
    answer: str
    """The model's reply."""
    images: list[Image.Image] = field(default_factory=list, repr=False)
    """The decoded images, kept so later turns do not decode them again."""


class ChatSession:
    """A multi-turn conversation with a VLM.

    Every turn renders the whole history through the chat template; an image stays attached
    to the user turn it was given with. Turn ``k`` samples with seed ``seed + k``, so a session
    replays exactly. The conversation's KV cache is kept across turns (``ConversationCache``):
    a turn runs only the tokens the cache does not hold (its own question, the previous reply's
    end), and an image is encoded once, in the turn it came with.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: VLMProcessor,
        system: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ):
        generation_kwargs(temperature, top_p)  # check the values now, not at the first turn
        self.model, self.processor, self.system = model, processor, system
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.turns: list[Turn] = []
        self.pending: list[tuple[Path, Image.Image]] = []
        """Images attached for the next turn."""
        self.cache = ConversationCache()
        """The keys and values of the conversation so far."""

    def attach_image(self, path: str | os.PathLike) -> Path:
        """Decode an image now (``ImageLoadError`` if unusable) and attach it to the next turn."""
        path = Path(path).expanduser().absolute()
        image = load_image(path)
        self.processor.image_processor.check_image(image)  # refused now, not at every later turn
        self.pending.append((path, image))
        return path

    def prompt(self, text: str) -> str:
        """The chat-formatted prompt the next turn would send for ``text``."""
        content = user_content(text, len(self.pending), self.processor.image_token)
        history = [(turn.content, turn.answer) for turn in self.turns]
        return self.processor.apply_chat_template(chat_messages(content, self.system, history))

    def ask(self, text: str, stream: TextIO | None = None) -> str:
        """Answer ``text`` with the pending images, after the history; on an error nothing changes."""
        content = user_content(text, len(self.pending), self.processor.image_token)
        paths, pictures = [path for path, _ in self.pending], [image for _, image in self.pending]
        images = [image for turn in self.turns for image in turn.images] + pictures  # in prompt order
        answer = generate(
            self.model, self.processor, [self.prompt(text)], [images], self.max_new_tokens,
            self.temperature, self.top_p, self.seed + len(self.turns), stream, conversation=self.cache,
        )[0]
        self.turns.append(Turn(content, paths, answer, pictures))
        self.pending = []
        return answer

    def reset(self) -> None:
        """Start over: forget the history and the pending images."""
        self.turns, self.pending = [], []
        self.cache.reset()

    def to_record(self, record_id: str) -> dict[str, Any]:
        """The conversation as one LLaVA SFT record: ``{"id", "image": [paths], "conversations"}``."""
        conversations = [{"from": "system", "value": self.system}] if self.system else []
        for turn in self.turns:
            conversations += [{"from": "human", "value": turn.content}, {"from": "gpt", "value": turn.answer}]
        record: dict[str, Any] = {"id": record_id}
        paths = [str(path) for turn in self.turns for path in turn.image_paths]
        if paths:
            record["image"] = paths
        record["conversations"] = conversations
        return record

    def save(self, path: str | os.PathLike) -> Path:
        """Write the answered turns atomically as a LLaVA JSON file (an array of one record, id = file stem).

        ``train.data.ConversationDataset`` reads it back for SFT; image paths are absolute.
        """
        if not self.turns:
            raise ValueError("nothing to save yet: no answered turns")
        path = Path(path).expanduser()
        if path.is_dir():
            raise ValueError(f"{path} is a folder; give a file name to save to, e.g. {path / 'chat.json'}")
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ValueError(f"cannot save to {path}: {parent} is a file, not a folder")
        atomic_write_json(path, [self.to_record(path.stem)], indent=1)
        return path


# --- the interactive prompt ---------------------------------------------------------------------

REPL_HELP = """\
Type a message and press Enter; the model answers with the whole conversation in mind.
  /image PATH   attach an image to your next message (repeat for several; without <image>
                marks in the message, each goes at its start)
  /reset        start a new conversation (forgets the history and attached images)
  /save FILE    write the conversation as LLaVA SFT JSON (what `vlm train` reads)
  /help         show this help
  /exit         quit (also Ctrl-D)
Ctrl-C stops a reply that is being written."""

_COMMAND = re.compile(r"/[A-Za-z]+")


def chat_loop(session: ChatSession, read_line: Callable[[], str], out: TextIO, err: TextIO) -> None:
    """Run the interactive prompt until ``/exit`` or ``read_line`` raises ``EOFError``.

    Replies stream to ``out``, one per turn, each ending in a newline; every other message goes
    to ``err``. Bad input (an unusable image, a prompt beyond the context, a failed save) is
    reported on one line and the prompt comes back.
    """
    while True:
        try:
            line = read_line()
        except EOFError:
            return
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D quits)", file=err)
            continue
        text = line.strip()
        if not text:
            continue
        command, _, argument = text.partition(" ")
        argument = argument.strip().strip("'\"")
        try:
            if command in ("/exit", "/quit"):
                return
            elif command == "/help":
                print(REPL_HELP, file=err)
            elif command == "/reset":
                session.reset()
                print("new conversation", file=err)
            elif command == "/image":
                if not argument:
                    raise ValueError("usage: /image PATH")
                path = session.attach_image(argument)
                print(f"attached {path} (image {len(session.pending)} for the next message)", file=err)
            elif command == "/save":
                if not argument:
                    raise ValueError("usage: /save FILE")
                path = session.save(argument)
                turns = len(session.turns)
                print(f"saved {turns} turn{'s' if turns != 1 else ''} to {path}", file=err)
            elif _COMMAND.fullmatch(command):  # "/usr/bin/..." is a message, "/foo" a typo
                raise ValueError(f"unknown command {command}; /help lists the commands")
            else:
                _answer(session, text, out, err)
        except ContextLengthError as error:
            hint = "; /reset starts a new conversation" if session.turns else ""
            print(f"error: {error}{hint}", file=err)
        except (ValueError, OSError) as error:  # ImageLoadError is a ValueError
            print(f"error: {error}", file=err)
        except KeyboardInterrupt:
            print("(stopped)", file=err)


def _answer(session: ChatSession, text: str, out: TextIO, err: TextIO) -> None:
    try:
        session.ask(text, stream=out)
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        print("(reply stopped; this turn is dropped)", file=err)

