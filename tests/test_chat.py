"""`vlm chat`: one-shot and interactive, as a user runs it (a subprocess fed on stdin), checked against the Python API.

The tiny Qwen2-style LLM is used because its random replies depend on the prompt and the
images (the tiny Llama answers newlines whatever it is asked), so equal answers mean equal prompts.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from apps.cli import main
from tiny import build_tiny_vlm, make_image
from train.data import ConversationDataset
from vlm.chat import ChatSession, ContextLengthError, answer_once, chat_loop, load_for_chat, user_content

REPO = Path(__file__).parents[1]
MAX_NEW_TOKENS = 6
TOO_LONG = " ".join(["yes"] * 1100)  # ~2200 tokens; the tiny LLM's context is 2048


def run_vlm(*args: str, stdin: str) -> tuple[int, str, str]:
    """``python -m apps ARGS`` (the ``vlm`` command) with ``stdin`` piped; stdout/stderr decoded without newline translation."""
    result = subprocess.run(
        [sys.executable, "-m", "apps", *args], input=stdin.encode(), capture_output=True, timeout=300, cwd=REPO,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory, qwen2_dir) -> dict[str, Path]:
    """One saved tiny VLM, two good images and one file per kind of bad image."""
    root = tmp_path_factory.mktemp("chat")
    model, processor = build_tiny_vlm(qwen2_dir)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    paths = {"model": root / "model", "a": root / "a.png", "b": root / "b.png"}
    make_image(0).save(paths["a"])
    make_image(1).save(paths["b"])
    paths["missing"] = root / "nope.png"
    paths["text"] = root / "notes.png"
    paths["text"].write_text("not an image")
    paths["truncated"] = root / "truncated.png"
    paths["truncated"].write_bytes(paths["a"].read_bytes()[: paths["a"].stat().st_size // 2])
    paths["bomb"] = root / "bomb.png"
    Image.new("1", (9000, 9000)).save(paths["bomb"])  # 81 Mpixels > load_image's 64 M cap; 10 kB on disk
    paths["strip"] = root / "strip.png"
    Image.new("RGB", (40000, 1)).save(paths["strip"])  # 196 bytes; resized to a 224 px short side: 2 Gpixels
    return paths


BAD_IMAGES = {
    "missing": "nope.png: no such image file",
    "text": "notes.png: not a readable image",
    "truncated": "truncated.png: not a readable image",
    "bomb": "exceeds the limit of 64000000",
    "strip": "strip.png: a 40000x1 image resized to a 224 px short side: 8960000x224 = 2007040000 pixels, over the limit",
}


@pytest.fixture(scope="module")
def loaded(files):
    return load_for_chat(files["model"])


def test_streamed_reply_equals_the_returned_reply(loaded, files):
    model, processor = loaded
    cases = [([files["a"]], "describe the picture"), ([files["a"], files["b"]], "how many shapes"), ([], "yes or no")]
    for images, prompt in cases:
        stream = io.StringIO()
        streamed = answer_once(model, processor, prompt, images=images, max_new_tokens=12, stream=stream)
        assert stream.getvalue() == streamed + "\n"
        assert answer_once(model, processor, prompt, images=images, max_new_tokens=12) == streamed


def test_a_session_resends_the_history_with_each_image_in_its_turn(loaded, files):
    model, processor = loaded
    session = ChatSession(model, processor, system="be brief", max_new_tokens=MAX_NEW_TOKENS)
    session.attach_image(files["a"])
    first = session.ask("describe the picture")
    prompt = session.prompt("what colour is it")
    assert prompt == processor.apply_chat_template([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "<image>\ndescribe the picture"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "what colour is it"},
    ])
    second = session.ask("what colour is it")
    # the same question without the history is a different prompt, and this model answers it differently
    alone = answer_once(model, processor, "what colour is it", system="be brief", max_new_tokens=MAX_NEW_TOKENS)
    assert second != alone
    session.reset()
    assert session.turns == [] and session.pending == []
    assert session.ask("what colour is it") == alone


def test_image_marks_must_match_the_attached_images():
    assert user_content("hi", 2) == "<image>\n<image>\nhi"
    assert user_content("<image> left, <image> right", 2) == "<image> left, <image> right"
    with pytest.raises(ValueError, match="1 <image> marks but 2 images"):
        user_content("<image> which?", 2)


def test_one_shot_prints_only_the_answer(loaded, files):
    model, processor = loaded
    code, out, err = run_vlm(
        "chat", "--model", str(files["model"]), "--image", str(files["a"]), "--max-new-tokens", str(MAX_NEW_TOKENS),
        stdin="describe the picture\n",
    )
    assert code == 0, err
    expected = answer_once(model, processor, "describe the picture", images=[files["a"]], max_new_tokens=MAX_NEW_TOKENS)
    assert out == expected + "\n"


# The child's own peak: VmHWM of its address space, which execve starts anew (getrusage's ru_maxrss
# is kept across execve, so a child of a 1.2 GB pytest process would report the parent's size).
PEAK_RSS = """\
import re, runpy, sys
sys.argv = ["vlm", *sys.argv[1:]]
try:
    runpy.run_module("apps", run_name="__main__")
except SystemExit as stop:
    code = stop.code
peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(f"exit={code} peak_rss_kb={peak}", file=sys.stderr)
"""


@pytest.mark.parametrize("case", ["strip", "bomb"])
def test_a_decompression_bomb_is_refused_within_1_gb(files, case):
    """The issue's probe: a 196-byte 40000x1 PNG took 9.3 GB in chat before the limit applied to every resize.

    The whole `vlm chat` process (Python, torch, the tiny model) is measured by its own peak RSS."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, "chat", "--model", str(files["model"]), "--image", str(files[case]), "--prompt", "hi"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    last = result.stderr.strip().splitlines()
    assert BAD_IMAGES[case] in last[-2] and "Traceback" not in result.stderr, result.stderr
    code, peak_kb = (int(part.split("=")[1]) for part in last[-1].split())
    assert code == 2 and peak_kb < 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MiB"


@pytest.mark.parametrize("case", [*BAD_IMAGES, "too_long"])
def test_one_shot_bad_input_exits_2_with_one_line(files, case, capsys):
    """In-process through the CLI's ``main`` (a subprocess per case would cost seconds each)."""
    prompt, images = (TOO_LONG, []) if case == "too_long" else ("describe", ["--image", str(files[case])])
    assert main(["chat", "--model", str(files["model"]), *images, "--prompt", prompt]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("vlm chat: error: ")
    assert ("context is 2048 tokens" if case == "too_long" else BAD_IMAGES[case]) in last


def test_an_interactive_session(loaded, files, tmp_path):
    """/image, several turns, every kind of bad input, /save, /reset, marks, /exit: one subprocess."""
    model, processor = loaded
    saved = tmp_path / "chat.json"
    bad_images = [f"/image {files[case]}" for case in BAD_IMAGES]
    script = [
        "/help",
        f"/image {files['a']}",
        "describe the picture",
        "what colour is it",
        *bad_images,
        "/frobnicate",
        TOO_LONG,
        "what shape is it",  # still answered after all of that
        f"/save {saved}",
        "/reset",
        "<image> one mark, no image",
        f"/image {files['b']}",
        f"/image {files['a']}",
        "is <image> brighter than <image>?",
        "/exit",
        "never answered",
    ]
    code, out, err = run_vlm(
        "chat", "--model", str(files["model"]), "--interactive", "--system", "be brief",
        "--max-new-tokens", str(MAX_NEW_TOKENS), stdin="\n".join(script) + "\n",
    )
    assert code == 0, err

    # the same conversation through the Python API
    session = ChatSession(model, processor, system="be brief", max_new_tokens=MAX_NEW_TOKENS)
    session.attach_image(files["a"])
    expected = [session.ask("describe the picture"), session.ask("what colour is it"), session.ask("what shape is it")]
    conversation = session.to_record("chat")
    session.reset()
    session.attach_image(files["b"])
    session.attach_image(files["a"])
    expected.append(session.ask("is <image> brighter than <image>?"))
    assert out == "".join(answer + "\n" for answer in expected)
    alone = answer_once(model, processor, "what colour is it", system="be brief", max_new_tokens=MAX_NEW_TOKENS)
    assert expected[1] != alone, "the second turn was answered with the first in its prompt"

    assert "/image PATH" in err and "/save FILE" in err  # /help
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    for message in BAD_IMAGES.values():
        assert any(message in line for line in errors), message
    assert "unknown command /frobnicate" in err
    assert "context is 2048 tokens" in err and "/reset starts a new conversation" in err
    assert "1 <image> marks but 0 images" in err
    assert f"saved 3 turns to {saved}" in err

    assert json.loads(saved.read_text()) == [conversation]
    dataset = ConversationDataset(saved)
    sample = dataset[0]
    assert sample.images == [files["a"]]
    assert sample.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "<image>\ndescribe the picture"},
        {"role": "assistant", "content": expected[0]},
        {"role": "user", "content": "what colour is it"},
        {"role": "assistant", "content": expected[1]},
        {"role": "user", "content": "what shape is it"},
        {"role": "assistant", "content": expected[2]},
    ]


def test_the_loop_ends_at_eof_and_keeps_the_turn_on_a_failed_save(loaded, files, tmp_path):
    model, processor = loaded
    session = ChatSession(model, processor, max_new_tokens=MAX_NEW_TOKENS)
    (tmp_path / "a-file").write_text("")
    lines = iter(["/save early.json", "hello", f"/save {tmp_path / 'a-file' / 'x.json'}", "/save"])

    def read_line() -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out, err = io.StringIO(), io.StringIO()
    chat_loop(session, read_line, out, err)  # returns at EOF
    messages = err.getvalue().splitlines()
    assert messages[0] == "error: nothing to save yet: no answered turns"
    assert messages[1].startswith("error: ") and "a-file" in messages[1]  # the OS error, on one line
    assert messages[2] == "error: usage: /save FILE"
    assert len(session.turns) == 1 and out.getvalue() == session.turns[0].answer + "\n"
    with pytest.raises(ContextLengthError):
        session.ask(TOO_LONG)
    assert len(session.turns) == 1, "a failed turn leaves the conversation as it was"


def test_undecodable_input_keeps_the_conversation(loaded):
    """Latin-1 bytes on stdin (read with surrogateescape) are refused in one line; the turns so far stay."""
    model, processor = loaded
    session = ChatSession(model, processor, max_new_tokens=MAX_NEW_TOKENS)
    latin1 = "caf\xe9 au lait?".encode("latin-1").decode("utf-8", errors="surrogateescape")
    lines = iter(["hello", latin1, "and now?"])

    def read_line() -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out, err = io.StringIO(), io.StringIO()
    chat_loop(session, read_line, out, err)
    assert err.getvalue().splitlines() == [
        "error: the prompt is not valid UTF-8 text: character 3 is U+DCE9, an undecodable byte or a lone surrogate; "
        "fix the encoding (UTF-8) and send it again"]
    assert [turn.content for turn in session.turns] == ["hello", "and now?"]
    assert out.getvalue() == "".join(turn.answer + "\n" for turn in session.turns)
