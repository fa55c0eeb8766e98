"""OpenAI ``messages`` -> the chat-formatted prompt and images, built as ``vlm chat`` builds them.

A conversation is an optional system message, then user and assistant messages taking turns,
ending with the user's. Each image part becomes an ``<image>`` mark followed by a newline where
the part stands, so ``[image, text]`` is exactly ``vlm chat --image ... --prompt text``'s user
turn (``vlm.chat.user_content``); earlier turns are its history, as ``ChatSession`` sends them
(``vlm.chat.chat_messages``). Images keep their order in the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from apps.serve.errors import APIError
from apps.serve.schema import ImagePart, Message
from vlm.chat import chat_messages
from vlm.processing import VLMProcessor

SYSTEM_ROLES = ("system", "developer")


@dataclass
class Prompt:
    text: str
    """The chat-formatted prompt, one ``<image>`` mark per image."""
    images: list[Image.Image]


def count_images(messages: Sequence[Message]) -> int:
    return sum(isinstance(part, ImagePart) for m in messages if not isinstance(m.content, str) for part in m.content)


def build_prompt(
    processor: VLMProcessor, messages: Sequence[Message], decode: Callable[[str, str], Image.Image]
) -> Prompt:
    """The prompt for ``messages``; ``decode(url, where)`` turns an image part's URL into an image.

    Raises ``APIError`` (400) naming the message for a conversation the chat template cannot take.
    """
    system, start = None, 0
    if messages[0].role in SYSTEM_ROLES:
        system, start = _text_only(messages[0], "messages[0]", processor.image_token), 1
    turns: list[str] = []
    images: list[Image.Image] = []
    for i, message in enumerate(messages[start:], start):
        where = f"messages[{i}]"
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if message.role in SYSTEM_ROLES:
            raise APIError(400, f"{where}: a system message may only come first", param=f"{where}.role")
        if message.role != expected:
            raise APIError(
                400, f"{where}: expected a '{expected}' message, got '{message.role}': after an optional system "
                "message, user and assistant messages take turns, starting and ending with the user", param=f"{where}.role",
            )
        if message.role == "assistant":
            turns.append(_text_only(message, where, processor.image_token))
        else:
            turns.append(_user_content(message, where, processor.image_token, decode, images))
    if len(turns) % 2 == 0:
        raise APIError(400, f"messages[{len(messages) - 1}]: the last message must be the user's (the question to answer)",
                       param="messages")
    history = list(zip(turns[0:-1:2], turns[1:-1:2]))
    text = processor.apply_chat_template(chat_messages(turns[-1], system, history))
    return Prompt(text, images)


def _check_text(text: str, where: str, image_token: str) -> str:
    if image_token in text:
        raise APIError(400, f"{where}: the text contains {image_token!r}, which marks images in this model's prompts; "
                       "send each image as an image_url part instead (it is placed where the part is)", param=where)
    return text


def _text_only(message: Message, where: str, image_token: str) -> str:
    if isinstance(message.content, str):
        return _check_text(message.content, f"{where}.content", image_token)
    texts = []
    for j, part in enumerate(message.content):
        if isinstance(part, ImagePart):
            raise APIError(400, f"{where}.content[{j}]: images may only be in user messages, not {message.role} ones",
                           param=f"{where}.content[{j}]")
        texts.append(_check_text(part.text, f"{where}.content[{j}].text", image_token))
    return "".join(texts)


def _user_content(message: Message, where: str, image_token: str, decode: Callable[[str, str], Image.Image],
                  images: list[Image.Image]) -> str:
    if isinstance(message.content, str):
        return _check_text(message.content, f"{where}.content", image_token)
    pieces = []
    for j, part in enumerate(message.content):
        if isinstance(part, ImagePart):
            images.append(decode(part.image_url.url, f"{where}.content[{j}].image_url.url"))
            pieces.append(image_token + "\n")  # vlm.chat.user_content's layout: each image on its own line
        else:
            pieces.append(_check_text(part.text, f"{where}.content[{j}].text", image_token))
    return "".join(pieces)
