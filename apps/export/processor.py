"""Our ``VLMProcessor`` as transformers' ``LlavaProcessor``: a CLIP image processor set to our preprocessing,
the same tokenizer (with the image token), our chat template.

Our pixels are open_clip's eval transform (``vision/preprocess.py``): RGB conversion (transparency
composited onto white), optional pad-to-square, resize of the shortest side (bicubic) and centre
crop, or a squash to the square; ``/255``, then mean / std. ``CLIPImageProcessor`` does each step the
same way (its ``convert_to_rgb`` composites onto white too) and its PIL backend gives the same
numbers; its torchvision backend, transformers 5's default, resizes tensors with its own antialiased
bicubic, up to 2/255 away from PIL's on images that need a resize (``AutoProcessor.from_pretrained(DIR,
backend="pil")`` selects the exact one). Two settings have no exact form and are refused:
open_clip's ``longest`` resize (resize the longest side, pad with black) and a pad-to-square whose
colour LLaVA computes differently (``int(255 * mean)``, ours rounds: 122 vs 123 for CLIP's red mean).
"""

from __future__ import annotations

from transformers import CLIPImageProcessor, LlavaImageProcessor, LlavaProcessor
from transformers.image_utils import PILImageResampling

from apps.export.keymap import ExportError

RESAMPLING = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}
# Turns structured content ([{"type": "image"}, {"type": "text", "text": ...}], what transformers'
# processors and chat UIs send) into the <image>-marked strings our template renders, exactly as
# VLMProcessor.apply_chat_template does; string content passes through untouched.
_STRUCTURED_CONTENT = (
    "{%- set flat = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set flat.messages = flat.messages + [message] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set text.value = text.value + IMAGE_TOKEN + '\\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set flat.messages = flat.messages + [{'role': message['role'], 'content': text.value}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = flat.messages %}"
)


def llava_chat_template(template: str, image_token: str) -> str:
    """Our chat template, taking transformers' structured message content as well as strings."""
    if not isinstance(template, str):
        raise ExportError("the tokenizer holds several named chat templates; the export takes one template string")
    token = image_token.replace("\\", "\\\\").replace("'", "\\'")
    return _STRUCTURED_CONTENT.replace("IMAGE_TOKEN", f"'{token}'") + template


def image_processor_settings(image_processor) -> dict:
    """``CLIPImageProcessor`` / ``LlavaImageProcessor`` settings equal to a ``VLMImageProcessor``'s pipeline."""
    height, width = image_processor.image_size
    if height != width:
        raise ExportError(f"a non-square input size {height}x{width}: LLaVA's processor crops to one size")
    if image_processor.interpolation not in RESAMPLING:
        raise ExportError(f"interpolation {image_processor.interpolation!r} has no CLIPImageProcessor form (use bicubic or bilinear)")
    settings = dict(
        do_convert_rgb=True,
        do_resize=True,
        resample=RESAMPLING[image_processor.interpolation],
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(image_processor.image_mean),
        image_std=list(image_processor.image_std),
    )
    if image_processor.resize_mode == "shortest":
        settings.update(size={"shortest_edge": height}, do_center_crop=True, crop_size={"height": height, "width": width})
    elif image_processor.resize_mode == "squash":
        settings.update(size={"height": height, "width": width}, do_center_crop=False, crop_size={"height": height, "width": width})
    else:
        raise ExportError(
            f"resize_mode {image_processor.resize_mode!r}: open_clip resizes the longest side and pads with black, "
            "which no transformers CLIP / LLaVA image processor does; only 'shortest' and 'squash' export"
        )
    if image_processor.pad_to_square:
        ours = tuple(int(round(255 * m)) for m in image_processor.image_mean)  # vision.ImagePreprocessor
        llava = tuple(int(m * 255) for m in image_processor.image_mean)  # LlavaImageProcessor._preprocess
        if ours != llava:
            raise ExportError(
                f"pad_to_square: our images are padded with colour {ours} (round(255 * mean)), transformers' "
                f"LlavaImageProcessor pads with {llava} (int(255 * mean)); every padded pixel would differ, so this "
                "model does not export exactly (retrain without --pad-to-square, or with a mean whose 255 * mean is whole)"
            )
        settings["do_pad"] = True
    return settings


def llava_processor(processor, patch_size: int, image_seq_length: int) -> LlavaProcessor:
    """The ``LlavaProcessor`` equal to our ``VLMProcessor`` (same tokenizer object, same template)."""
    settings = image_processor_settings(processor.image_processor)
    image_processor = LlavaImageProcessor(**settings) if settings.get("do_pad") else CLIPImageProcessor(**settings)
    tokenizer = processor.tokenizer
    llava = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, which "default" drops again
        chat_template=llava_chat_template(tokenizer.chat_template, processor.image_token),
        image_token=processor.image_token,
    )
    crop = settings["crop_size"]["height"]
    tokens = (crop // patch_size) ** 2
    if tokens != image_seq_length:
        raise ExportError(f"LlavaProcessor would expand <image> to {tokens} tokens, the model takes {image_seq_length}")
    if llava.image_token_id != processor.image_token_id:
        raise ExportError(f"the image token {processor.image_token!r} encodes to {llava.image_token_id}, not {processor.image_token_id}")
    return llava
