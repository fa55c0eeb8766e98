"""How LLaVA and MiniMind-V records name their turns and images, and the checks on a record's text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from train.data.sample import InvalidRecord, type_name


@dataclass(frozen=True)
class Flavour:
    """How one family of formats names turns and images."""

    role_key: str
    content_key: str
    roles: dict[str, str]
    comma_separated_images: bool


LLAVA = Flavour(
    "from",
    "value",
    {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"},
    False,
)
MINIMIND = Flavour("role", "content", {"user": "user", "assistant": "assistant", "system": "system"}, True)


def normalise_turns(conversations: Any, flavour: Flavour) -> list[dict[str, str]]:
    if conversations is None:
        raise InvalidRecord("no 'conversations' field")
    if not isinstance(conversations, list):
        raise InvalidRecord(f"'conversations' is a {type_name(conversations)}, expected an array of turns")
    if not conversations:
        raise InvalidRecord("'conversations' is empty")
    messages, speakers = [], []
    for t, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise InvalidRecord(
                f"turn {t} is a {type_name(turn)}, expected an object with {flavour.role_key!r} and {flavour.content_key!r}"
            )
        if flavour.role_key not in turn:
            raise InvalidRecord(f"turn {t} has no {flavour.role_key!r} field (it has {sorted(turn)})")
        speaker = turn[flavour.role_key]
        role = flavour.roles.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise InvalidRecord(
                f"turn {t} has unknown {flavour.role_key!r} value {speaker!r}; expected one of {sorted(flavour.roles)}"
            )
        content = turn.get(flavour.content_key)
        if not isinstance(content, str):
            raise InvalidRecord(
                f"turn {t} ({speaker}) has no text: {flavour.content_key!r} is {type_name(content)}, expected a string"
            )
        messages.append({"role": role, "content": content})
        speakers.append(speaker)

    first = 1 if messages[0]["role"] == "system" else 0
    if first == len(messages):
        raise InvalidRecord("the conversation is only a system message; it needs a user turn and an assistant reply")
    for t in range(first, len(messages)):
        expected = "user" if (t - first) % 2 == 0 else "assistant"
        if messages[t]["role"] != expected:
            if messages[t]["role"] == "system":
                raise InvalidRecord(f"turn {t} is a system message; only the first turn may be one")
            raise InvalidRecord(
                f"turn {t} is {messages[t]['role']} ({speakers[t]!r}) but {expected} was expected: turns must alternate "
                "user/assistant, starting with user (after an optional system message)"
            )
    if messages[-1]["role"] != "assistant":
        raise InvalidRecord(
            f"the conversation ends with a user turn (turn {len(messages) - 1}); the last turn must be the assistant's reply"
        )
    return messages


def image_names(field: Any, flavour: Flavour) -> list[str]:
    """The image paths of a JSON record as written: ``"a.jpg"``, ``["a.jpg", "b.jpg"]`` or MiniMind's ``"a.jpg, b.jpg"``."""
    if field is None:
        return []
    if isinstance(field, str):
        names = [n.strip() for n in field.split(",")] if flavour.comma_separated_images else [field]
    elif isinstance(field, list):
        names = field
    else:
        raise InvalidRecord(f"'image' is a {type_name(field)}, expected a path or an array of paths")
    for k, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise InvalidRecord(f"image {k} in 'image' is {name!r}, expected a file path")
    return names


def image_bytes(field: Any) -> list[bytes]:
    """The images of a Parquet row: one ``bytes`` value, a list of them, or null (text-only)."""
    if field is None:
        return []
    images = field if isinstance(field, list) else [field]
    for k, data in enumerate(images):
        if not isinstance(data, bytes):
            raise InvalidRecord(f"image {k} in 'image_bytes' is a {type(data).__name__}, expected encoded image bytes")
        if not data:
            raise InvalidRecord(f"image {k} in 'image_bytes' is empty (0 bytes)")
    return images


def _numbered(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_image_tags(messages: list[dict[str, str]], num_images: int, image_token: str) -> None:
    for t, message in enumerate(messages):
        if message["role"] != "user" and image_token in message["content"]:
            raise InvalidRecord(f"{image_token} in turn {t} ({message['role']}); image tags belong in user turns")
    tags = sum(m["content"].count(image_token) for m in messages)
    if tags != num_images:
        raise InvalidRecord(f"{_numbered(tags, image_token + ' tag')} but {_numbered(num_images, 'image')}")
