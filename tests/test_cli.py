"""The `vlm` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tiny import TINY_CLIP_CONFIG, make_image
from vlm.chat import answer_once, load_for_chat


def vlm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "apps", *args], input=stdin, capture_output=True, text=True, timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )


def test_help_lists_the_commands():
    result = vlm("--help")
    assert result.returncode == 0
    for command in ("build", "chat", "data"):
        assert command in result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny-vit.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    out = root / "model"
    result = vlm("build", "--llm", str(llama_dir), "--vision-config", str(config), "--vision-pretrained", "none", "--out", str(out))
    assert result.returncode == 0, result.stderr
    image = root / "picture.png"
    make_image(0).save(image)
    return out, image


def test_build_writes_a_loadable_folder_and_never_overwrites(built):
    out, _ = built
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "vlm" and saved["vision_config"]["model_name"] == "tiny-vit"
    before = (out / "model.safetensors").stat().st_mtime_ns
    again = vlm("build", "--llm", "unused", "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".model.tmp")]


def test_chat_prints_only_the_answer_on_stdout(built):
    out, image = built
    args = ("chat", "--model", str(out), "--image", str(image), "--max-new-tokens", "5")
    by_flag = vlm(*args, "--prompt", "describe the picture")
    assert by_flag.returncode == 0, by_flag.stderr
    # the streamed stdout is exactly the answer, nothing else (logs are on stderr)
    model, processor = load_for_chat(out)
    expected = answer_once(model, processor, "describe the picture", images=[image], max_new_tokens=5)
    assert by_flag.stdout == expected + "\n"
    assert "Loading" in by_flag.stderr
    by_stdin = vlm(*args, stdin="describe the picture\n")
    assert by_stdin.returncode == 0 and by_stdin.stdout == by_flag.stdout  # greedy: the same answer


def test_chat_with_a_missing_image_names_it(built):
    out, image = built
    result = vlm("chat", "--model", str(out), "--image", str(image.parent / "nope.png"), "--prompt", "hi")
    assert result.returncode == 2
    assert "nope.png: no such image file" in result.stderr
