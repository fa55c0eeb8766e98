"""The frozen open_clip tower: patch tokens are open_clip's own block outputs, CLS dropped."""

from __future__ import annotations

import copy

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode

from tiny import TINY_CLIP_CONFIG, make_image
from vision import ImageLoadError, ImagePreprocessor, load_image, load_vision_tower, pad_to_square, to_rgb


def _batch_first(visual: torch.nn.Module) -> torch.nn.Module:
    """A copy of an open_clip tower in open_clip's default layout (blocks on (N, L, D) tokens)."""
    visual = copy.deepcopy(visual)
    visual.transformer.batch_first = True
    for block in visual.transformer.resblocks:
        block.attn.batch_first = True
    return visual


def _block_output(visual: torch.nn.Module, block: int, pixels: torch.Tensor) -> torch.Tensor:
    """Run open_clip's own forward, in its default layout, and capture the output of one residual block."""
    visual = _batch_first(visual)
    captured = {}
    visual.transformer.resblocks[block].register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        visual(pixels)
    return captured["x"]  # [N, 1 + T, D], CLS first


@pytest.mark.parametrize("feature_layer, block", [(-2, 1), (-1, 2), (0, 0)])
def test_patch_tokens_equal_open_clip_block_output(feature_layer, block):
    torch.manual_seed(0)
    tower = load_vision_tower(None, model_config=TINY_CLIP_CONFIG, feature_layer=feature_layer)
    pixels = torch.randn(2, 3, 224, 224)
    tokens = tower(pixels)
    assert tokens.shape == (2, 196, 32)
    reference = _block_output(tower.visual, block, pixels)[:, 1:]
    # fp32; the tower runs its blocks sequence-first (one addmm per projection), open_clip's
    # default batch-first (a fused attention kernel): equal up to float rounding.
    torch.testing.assert_close(tokens, reference, rtol=1e-5, atol=1e-5)


class _Ops(TorchDispatchMode):
    """Counts the aten ops that run and the matrix products' operand shapes."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append((func.__name__, [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def test_under_bf16_autocast_every_projection_is_one_matrix_product():
    """open_clip's default layout under autocast runs each attention's input projection as a bmm of
    197 products against a broadcast weight (a slow kernel shape); the tower's layout folds it."""
    torch.manual_seed(0)
    tower = load_vision_tower(None, model_config=TINY_CLIP_CONFIG)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.autocast("cpu", dtype=torch.bfloat16), _Ops() as counted:
        tokens = tower(pixels)
    names = [name for name, _ in counted.ops]
    blocks = tower.block_index + 1
    assert "bmm.default" not in names
    # per block: the input projection, the output projection and the two MLP layers, each one 2-D addmm
    products = [shapes for name, shapes in counted.ops if name == "addmm.default"]
    assert len(products) == 4 * blocks
    assert all(len(matrix) == 2 for _, *matrices in products for matrix in matrices)  # (bias, input, weight)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = _batch_first(tower.visual).forward_intermediates(
            pixels, indices=[tower.block_index], stop_early=True, intermediates_only=True, output_fmt="NLC"
        )["image_intermediates"][0]
    # bf16 tolerance: the same products in another kernel shape
    torch.testing.assert_close(tokens.float(), reference.float(), rtol=2e-2, atol=2e-2)


def test_weights_file_loads_the_clip_image_tower(tmp_path):
    torch.manual_seed(1)
    clip = open_clip.CLIP(**copy.deepcopy(TINY_CLIP_CONFIG))
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    tower = load_vision_tower(None, pretrained=str(path), model_config=TINY_CLIP_CONFIG)
    for name, tensor in tower.visual.state_dict().items():
        assert torch.equal(tensor, clip.visual.state_dict()[name]), name
    pixels = torch.randn(1, 3, 224, 224)
    # Another module instance and layout may pick another kernel: equal up to float rounding.
    torch.testing.assert_close(tower(pixels), _block_output(clip.visual, 1, pixels)[:, 1:])
    assert tower.vision_config["pretrained"] == str(path)


def test_weights_file_of_another_architecture_is_a_clear_error(tmp_path):
    other = copy.deepcopy(TINY_CLIP_CONFIG)
    other["vision_cfg"]["width"] = 64
    other["vision_cfg"]["head_width"] = 32
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**other).state_dict().items()}, str(path))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_vision_tower(None, pretrained=str(path), model_config=TINY_CLIP_CONFIG)


def test_unknown_pretrained_tag_names_the_known_tags():
    with pytest.raises(ValueError, match="openai"):
        load_vision_tower("ViT-B-16", pretrained="no-such-tag")


def test_tower_is_frozen_in_training():
    tower = load_vision_tower(None, model_config=TINY_CLIP_CONFIG)
    assert not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.training and not any(m.training for m in tower.modules())
    pixels = torch.randn(1, 3, 224, 224, requires_grad=True)
    with torch.enable_grad():
        out = tower(pixels)
    assert not out.requires_grad


def test_token_count_follows_image_and_patch_size():
    cfg = copy.deepcopy(TINY_CLIP_CONFIG)
    cfg["vision_cfg"].update(image_size=112, patch_size=16)
    tower = load_vision_tower(None, model_config=cfg)
    assert tower.num_patches == 49
    assert tower(torch.randn(1, 3, 112, 112)).shape == (1, 49, 32)


def test_feature_layer_out_of_range():
    with pytest.raises(ValueError, match="out of range for a 3-block ViT"):
        load_vision_tower(None, model_config=TINY_CLIP_CONFIG, feature_layer=3)


def test_rgba_grayscale_and_palette_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    rgb = to_rgb(rgba)
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == (255, 255, 255) and rgb.getpixel((0, 0)) == (0, 0, 255)
    gray = to_rgb(Image.new("L", (2, 2), 77))
    assert gray.getpixel((0, 0)) == (77, 77, 77)
    palette = Image.new("RGB", (2, 2), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert to_rgb(palette).getpixel((1, 1)) == (10, 200, 30)


def test_pad_to_square_centres_the_image_on_the_background():
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    square = pad_to_square(image, (1, 2, 3))
    assert square.size == (100, 100)
    assert square.getpixel((50, 10)) == (1, 2, 3) and square.getpixel((50, 90)) == (1, 2, 3)
    assert square.getpixel((50, 25)) == (255, 0, 0) and square.getpixel((50, 74)) == (255, 0, 0)


def test_preprocessor_is_open_clips_transform():
    image = make_image(3, size=(300, 200))
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    ours = ImagePreprocessor(224, mean, std)(image)
    reference = open_clip.image_transform(224, is_train=False, mean=mean, std=std)(image)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    padded = ImagePreprocessor(224, mean, std, pad_to_square=True)(image)
    assert padded.shape == (3, 224, 224) and not torch.equal(padded, ours)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.png: not a readable image"):
        load_image(text)
    good = tmp_path / "good.png"
    make_image(0).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(good, max_pixels=1000)
    sixteen_bit = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(sixteen_bit)
    assert np.asarray(load_image(sixteen_bit)).min() == 255  # 16-bit white stays white (scaled, not clipped)
    assert load_image(good).mode == "RGB"


@pytest.mark.parametrize("values, mode, expected", [
    (np.array([[0, 257, 65535]], dtype=np.uint16), "I;16", [0, 1, 255]),  # 16-bit PNG / TIFF
    (np.array([[0, 128, 255]], dtype=np.int32), "I", [0, 128, 255]),  # already 8-bit values
    (np.array([[0, 32896, 65535]], dtype=np.int32), "I", [0, 128, 255]),
    (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F", [0, 128, 255]),  # float in [0, 1]
    (np.array([[0.0, 127.6, 255.0]], dtype=np.float32), "F", [0, 128, 255]),
    (np.array([[np.nan, 0.5, 1.0]], dtype=np.float32), "F", [0, 128, 255]),  # NaN is black
])
def test_deep_and_float_images_are_scaled_to_8_bits(values, mode, expected, tmp_path):
    image = Image.fromarray(values)
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, :, 0].tolist() == expected


@pytest.mark.parametrize("size, pad, ok", [((40000, 1), False, False), ((40000, 1), True, False), ((4000, 3000), True, True),
                                           ((400, 100), True, True), ((2000, 5), False, True), ((100000, 5), False, False)])
def test_the_pixel_limit_holds_after_padding_and_resizing(size, pad, ok):
    pipeline = ImagePreprocessor(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), pad_to_square=pad)
    image = Image.new("RGB", size)
    if ok:
        assert pipeline(image).shape == (3, 224, 224)
    else:
        with pytest.raises(ImageLoadError, match=f"a {size[0]}x{size[1]} image .* over the limit of 64000000"):
            pipeline(image)
