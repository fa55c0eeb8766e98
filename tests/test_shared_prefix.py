"""Shared prefixes through the KV cache (vlm.shared_prefix): the plain path's tokens and logits, with less work.

The models are the tiny fp32 ones of tiny.py, built in fp32 here whatever the CPU: logits are
compared with an fp32 tolerance (1e-4; the two paths differ only in the order of float sums),
greedy tokens exactly.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LogitsProcessorList

from tiny import build_tiny_vlm, make_image
from vlm.chat import ChatSession, generate
from vlm.shared_prefix import ConversationCache, common_prefix_length, generate_sharing_prefixes, prefix_cut

FP32_TOLERANCE = 1e-4
NEW_TOKENS = 8


@pytest.fixture(params=["llama", "qwen2"])
def vlm(request, llama_dir, qwen2_dir):
    model, processor = build_tiny_vlm(llama_dir if request.param == "llama" else qwen2_dir)
    return model.float(), processor


class Scores:
    """A logits processor that keeps every step's scores ``[B, V]``."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.clone())
        return scores


class Counter:
    """Counts the images the vision tower encodes and the tokens the LLM runs."""

    def __init__(self, model):
        self.images, self.tokens = 0, []
        self.handles = [
            model.vision_tower.register_forward_hook(lambda m, i, o: setattr(self, "images", self.images + i[0].shape[0])),
            model.get_input_embeddings().register_forward_hook(lambda m, i, o: self.tokens.append(i[0].shape[1])),
        ]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _prompt(processor, content, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages)


def _batch(processor):
    """Questions about three images in mixed order: several per image, two images in one, text only, text before the mark."""
    a, b, c = make_image(1), make_image(2), make_image(3)
    rows = [
        ("<image>\nwhat colour is the circle", [a]),
        ("<image>\nhow many shapes are there? describe the picture in detail", [b]),
        ("<image>\nyes or no", [a]),
        ("yes or no", []),
        ("<image>\n<image>\nwhich is brighter", [a, b]),
        ("describe <image> please", [c]),
        ("<image>\nleft or right", [a]),
        ("what is at the top left", []),
        ("<image>\nthe red square is at the top left", [b]),
    ]
    return [_prompt(processor, text, system="be brief") for text, _ in rows], [images for _, images in rows]


def _generate(model, processor, prompts, images, share: bool):
    scores = Scores()
    inputs = processor(text=prompts, images=images)
    options = dict(max_new_tokens=NEW_TOKENS, do_sample=False, logits_processor=LogitsProcessorList([scores]))
    if share:
        new = generate_sharing_prefixes(model, processor, inputs, **options)
    else:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        new = model.generate(**inputs, pad_token_id=processor.tokenizer.pad_token_id, **options)[:, inputs["input_ids"].shape[1]:]
    return new, torch.stack(scores.steps)  # [B, T], [T, B, V]


def test_shared_prefixes_give_the_plain_batch_tokens_and_logits(vlm):
    model, processor = vlm
    prompts, images = _batch(processor)
    plain, plain_scores = _generate(model, processor, prompts, images, share=False)
    shared, shared_scores = _generate(model, processor, prompts, images, share=True)
    assert torch.equal(shared, plain)
    torch.testing.assert_close(shared_scores, plain_scores, atol=FP32_TOLERANCE, rtol=FP32_TOLERANCE)


def test_each_image_and_its_prefix_run_once(vlm):
    model, processor = vlm
    image = make_image(4)
    questions = ["what colour is the circle", "yes or no", "how many shapes are there?", "left or right"]
    prompts = [_prompt(processor, f"<image>\n{q}", system="be brief") for q in questions]
    inputs = processor(text=prompts, images=[[image]] * len(prompts))
    counter = Counter(model)
    generate_sharing_prefixes(model, processor, inputs, max_new_tokens=1, do_sample=False)
    counter.remove()
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    prefix = common_prefix_length(rows)
    assert prefix > processor.image_seq_length, "the system text, the image and the user turn's opening are shared"
    assert counter.images == 1, "four questions about one image encode it once"
    assert counter.tokens[0] == prefix, "the prefix runs once, in a batch of one"
    assert counter.tokens[1] == max(len(row) for row in rows) - prefix, "then only each question's own tokens"


def test_the_prefix_never_splits_an_image():
    image, seq = 9, 4
    rows = [[1, 2, image, image, image, image, 5, 6], [1, 2, image, image, image, image, 7]]
    assert prefix_cut(rows, image, seq) == 6
    # one row ending with the image's last placeholder: the prefix stops before the image
    assert prefix_cut([[1, 2, image, image, image, image], [1, 2, image, image, image, image, 7]], image, seq) == 2
    assert prefix_cut([[1, 2, 3], [1, 2, 3]], image, seq) == 2, "each row keeps a token to run"


def test_a_lora_model_shares_prefixes_too(vlm):
    model, processor = vlm
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    prompts, images = _batch(processor)
    plain, plain_scores = _generate(lora, processor, prompts, images, share=False)
    shared, shared_scores = _generate(lora, processor, prompts, images, share=True)
    assert torch.equal(shared, plain)
    torch.testing.assert_close(shared_scores, plain_scores, atol=FP32_TOLERANCE, rtol=FP32_TOLERANCE)


def _plain_session_answers(model, processor, turns, system):
    """Each turn as the plain path runs it: the whole conversation, every image, from scratch."""
    history, seen, answers = [], [], []
    for text, new_images in turns:
        seen += new_images
        content = "<image>\n" * len(new_images) + text
        messages = ([{"role": "system", "content": system}] if system else [])
        for question, answer in history:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        prompt = processor.apply_chat_template(messages + [{"role": "user", "content": content}])
        answer = generate(model, processor, [prompt], [list(seen)], max_new_tokens=NEW_TOKENS, seed=len(answers),
                          share_prefix=False)[0]
        history.append((content, answer))
        answers.append(answer)
    return answers


def test_a_chat_keeps_its_cache_across_turns_and_answers_as_the_plain_path(vlm, tmp_path):
    model, processor = vlm
    paths = []
    for seed in (5, 6):
        paths.append(tmp_path / f"{seed}.png")
        make_image(seed).save(paths[-1])
    turns = [("describe the picture", [paths[0]]), ("what colour is the circle", []),
             ("how many shapes are there?", [paths[1]]), ("yes or no", [])]
    session = ChatSession(model, processor, system="be brief", max_new_tokens=NEW_TOKENS)
    counter = Counter(model)
    answers, images_per_turn, first_run = [], [], []
    for text, new_images in turns:
        for path in new_images:
            session.attach_image(path)
        before = (counter.images, len(counter.tokens))
        answers.append(session.ask(text))
        images_per_turn.append(counter.images - before[0])
        first_run.append(counter.tokens[before[1]])  # tokens of the turn's prefill
    counter.remove()
    loaded = [image for turn in session.turns for image in turn.images]
    from vision import load_image

    assert answers == _plain_session_answers(model, processor, [(t, [load_image(p) for p in i]) for t, i in turns],
                                             "be brief")
    assert len(loaded) == 2
    assert images_per_turn == [1, 0, 1, 0], "an image is encoded in its own turn only"
    full = [len(processor.tokenizer(processor.expand_image_tokens(session_prompt))["input_ids"])
            for session_prompt in _prompts_of(session, processor)]
    assert first_run[0] == full[0]
    for turn in range(1, len(turns)):
        assert first_run[turn] < full[turn] - full[turn - 1] + NEW_TOKENS + 8, f"turn {turn} reran the history"


def _prompts_of(session, processor):
    """The prompt text each turn of ``session`` sent."""
    prompts, history = [], []
    system = [{"role": "system", "content": session.system}] if session.system else []
    for turn in session.turns:
        messages = list(system)
        for question, answer in history:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        prompts.append(processor.apply_chat_template(messages + [{"role": "user", "content": turn.content}]))
        history.append((turn.content, turn.answer))
    return prompts


def test_an_interrupted_turn_drops_the_cache_and_the_next_turn_is_still_right(vlm, monkeypatch):
    model, processor = vlm
    image = make_image(7)
    conversation = ConversationCache()
    prompt = _prompt(processor, "<image>\ndescribe the picture")
    inputs = processor(text=[prompt], images=[[image]])
    first = conversation.generate(model, processor, inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert conversation.cache is not None and len(conversation.token_ids) == inputs["input_ids"].shape[1] + first.shape[1] - 1

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model), "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        conversation.generate(model, processor, inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert conversation.cache is None and conversation.token_ids == []
    monkeypatch.undo()
    again = conversation.generate(model, processor, inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(again, first)
