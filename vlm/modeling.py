"""``VLMForCausalLM``: frozen vision tower -> projector -> placeholder embeddings -> any causal LM.

The flow of one batch (see DESIGN.md)::

    pixel_values (N_img, 3, 224, 224) --vision_tower--> (N_img, 196, D_vis) --projector--> (N_img, 196, D_llm)
    input_ids (B, L) --LLM embeddings--> (B, L, D_llm); rows where input_ids == image_token_id are
    replaced, in order, by the projected patch tokens -> LLM -> logits / loss

Images are given flat, in batch order: the images of sample 0, then those of sample 1, ...
Placeholders are filled in the same (row-major) order, so the k-th image of a sample lands
on that sample's k-th run of ``image_seq_length`` placeholders.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.modeling_outputs import CausalLMOutputWithPast

from projector import build_projector
from vision import VisionTower
from vlm.configuration import VLMConfig


class VLMForCausalLM(PreTrainedModel, GenerationMixin):
    """A LLaVA / MiniMind-V style VLM wrapping any transformers causal LM.

    Args:
        config: the :class:`VLMConfig`.
        language_model: an already built (e.g. pretrained) LLM to wrap instead of a freshly
            initialised one from ``config.text_config``; how :func:`vlm.build_vlm` starts a run.
        vision_tower: likewise an already loaded :class:`vision.VisionTower`.
    """

    config_class = VLMConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["VisionTower"]

    def __init__(
        self,
        config: VLMConfig,
        language_model: PreTrainedModel | None = None,
        vision_tower: VisionTower | None = None,
    ):
        super().__init__(config)
        if config.vision_config is None:
            raise ValueError("VLMConfig.vision_config is empty; build a model with vlm.build_vlm(...)")
        if vision_tower is None:
            vision_tower = VisionTower(config.vision_config, feature_layer=config.vision_feature_layer)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        # One config object for the LLM: resize_token_embeddings and save_pretrained must see
        # the same vocab_size in model.language_model.config and model.config.text_config.
        config.text_config = language_model.config
        if vision_tower.num_patches != config.image_seq_length:
            raise ValueError(
                f"the vision tower gives {vision_tower.num_patches} patch tokens per image but "
                f"config.image_seq_length={config.image_seq_length}; they must be equal"
            )
        self.vision_tower = vision_tower
        self.projector = build_projector(config.projector_type, vision_tower.hidden_size, config.text_config.hidden_size)
        self.language_model = language_model
        self.post_init()

    # Only the projector is ours to initialise: open_clip initialises the tower in its own
    # constructor, the LLM child dispatches to its own _init_weights, and from_pretrained
    # skips whatever it loaded.
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and any(module is m for m in self.projector.modules()):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def get_image_features(self, pixel_values: torch.Tensor | None = None, vision_features: torch.Tensor | None = None) -> torch.Tensor:
        """``(N_img, 3, H, W)`` -> projected patch tokens ``(N_img, image_seq_length, D_llm)``.

        ``vision_features`` (``(N_img, T, D_vis)``) are the vision tower's outputs computed
        earlier (train.features caches them): the tower is frozen, so they stand in for pixels.
        """
        if (pixel_values is None) == (vision_features is None):
            raise ValueError("give exactly one of pixel_values or vision_features")
        patch_tokens = self.vision_tower(pixel_values) if vision_features is None else vision_features  # [N, T, D_vis], no grad
        projector_dtype = next(self.projector.parameters()).dtype
        return self.projector(patch_tokens.to(projector_dtype))  # [N, T, D_llm]

    def _image_placeholder_mask(
        self, input_ids: torch.LongTensor, num_images: torch.Tensor | None, total_images: int
    ) -> torch.Tensor:
        """Boolean ``(B, L)`` mask of placeholders, after checking it matches the images sample by sample."""
        mask = input_ids == self.config.image_token_id
        per_sample = mask.sum(dim=1).tolist()
        tokens_per_image = self.config.image_seq_length
        if num_images is not None:
            expected = [int(n) * tokens_per_image for n in num_images.tolist()]
            if len(expected) != len(per_sample):
                raise ValueError(f"num_images has {len(expected)} entries for a batch of {len(per_sample)} samples")
            if int(sum(num_images.tolist())) != total_images:
                raise ValueError(f"num_images sums to {int(sum(num_images.tolist()))} but pixel_values holds {total_images} images")
        else:
            expected = None
        for i, count in enumerate(per_sample):
            if count % tokens_per_image or (expected is not None and count != expected[i]):
                want = f"{expected[i]} ({int(num_images[i])} images x {tokens_per_image})" if expected else f"a multiple of {tokens_per_image}"
                raise ValueError(
                    f"sample {i} of the batch: {count} image placeholder tokens but {want}; each <image> must "
                    f"expand to exactly {tokens_per_image} placeholders (use VLMProcessor) and every <image> needs one image"
                )
        if sum(per_sample) != total_images * tokens_per_image:
            raise ValueError(
                f"image placeholders and images do not match: {sum(per_sample)} placeholder tokens "
                f"({sum(per_sample) // tokens_per_image} images' worth; per sample: {[c // tokens_per_image for c in per_sample]}) "
                f"but {total_images} images in pixel_values"
            )
        return mask

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        num_images: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LLM input embeddings with the placeholder rows replaced by projected patch tokens."""
        inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, L, D]
        if pixel_values is not None and vision_features is not None:
            raise ValueError("give pixel_values or vision_features, not both")
        images = pixel_values if pixel_values is not None else vision_features
        total_images = 0 if images is None else images.shape[0]
        # num_images describes pixel_values; decoding steps after prefill carry neither images
        # nor placeholders (generate drops pixel_values there), so it is only checked with them.
        mask = self._image_placeholder_mask(input_ids, num_images if total_images else None, total_images)
        if total_images:
            image_features = self.get_image_features(pixel_values, vision_features).to(inputs_embeds.dtype)  # [N, T, D]
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), image_features)
        elif self.training:
            # A text-only batch leaves the projector out of the graph; under DDP / ZeRO every
            # rank must produce gradients for the same parameters, so add a zero-valued use.
            inputs_embeds = inputs_embeds + 0.0 * sum(p.sum() for p in self.projector.parameters())
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        num_images: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        labeled_positions_only: bool | None = None,
        vision_features: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Embed text and images, then run the LLM (which computes the shifted cross-entropy on ``labels``).

        Args:
            input_ids: ``(B, L)`` token ids with ``image_seq_length`` placeholders per image.
            pixel_values: ``(N_img, 3, H, W)``, all images of the batch in sample order.
            vision_features: instead of ``pixel_values``, the frozen vision tower's outputs
                ``(N_img, T, D_vis)`` computed earlier (training's feature cache).
            num_images: ``(B,)`` images per sample; optional, enables per-sample checks.
            labels: ``(B, L)``, ``-100`` where no loss is taken.
            labeled_positions_only: with ``labels``, run the LM head and the loss only at the
                positions that predict a label (shifted label not ``-100``): the image tokens,
                the prompt and the padding need no vocabulary projection. The loss (and its
                gradients) equal the plain path's; ``logits`` is then ``(N_labeled, vocab)``, the
                rows of those positions in row-major (sample, position) order, not ``(B, L, vocab)``.
                ``None`` (default): on in training mode, off in eval mode. Falls back to the
                plain path for an LLM without a separate decoder and output embedding, with
                logit post-processing (soft-capping, scaling), or when ``logits_to_keep`` is set.
            **kwargs: passed to the LLM (``cache``, ``output_hidden_states``, ...).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, num_images, vision_features)
        elif pixel_values is not None or vision_features is not None:
            raise ValueError(
                "pixel_values / vision_features need input_ids (the placeholders say where the images go), not inputs_embeds"
            )
        if labeled_positions_only is None:
            labeled_positions_only = self.training
        if use_cache is None and self.training and labels is not None:
            # A training step has no use for a KV cache (the LLM's config says use_cache=True
            # for generation); without one, every decoder layer runs the same code, which is
            # also what lets one compiled graph serve all layers (torch_compile).
            use_cache = False
        split = _decoder_and_plain_head(self.language_model) if labels is not None and labeled_positions_only else None
        if split is not None and isinstance(logits_to_keep, int) and logits_to_keep == 0 and "shift_labels" not in kwargs:
            decoder, head = split
            num_items_in_batch = kwargs.pop("num_items_in_batch", None)
            outputs = decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **kwargs,
            )
            # The plain path's shift: position t predicts labels[t + 1]; the last predicts nothing.
            shift_labels = nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].to(inputs_embeds.device)  # [B, L]
            learned = shift_labels != -100  # [B, L]
            logits = head(outputs.last_hidden_state[learned])  # [N_labeled, V]
            # transformers' own causal-LM cross-entropy (float, mean or sum / num_items_in_batch).
            loss = fixed_cross_entropy(logits.float(), shift_labels[learned], num_items_in_batch, ignore_index=-100)
            return CausalLMOutputWithPast(
                loss=loss,
                logits=logits,
                cache=outputs.cache,
                hidden_states=outputs.hidden_states,
                attentions=outputs.attentions,
            )
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


# Config fields with which an LLM's forward changes the logits after its output embedding
# (Gemma-style soft-capping, Cohere / Granite scaling, ...): the labeled-positions path, which
# applies the output embedding alone, must not be used for those.
_LOGIT_POST_PROCESSING = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "logits_soft_cap",
    "output_logit_soft_cap",
    "output_multiplier",
)


def _decoder_and_plain_head(language_model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(decoder, output embedding)`` when ``lm_head(decoder(x))`` is the LLM's whole logit computation, else ``None``."""
    get_decoder = getattr(language_model, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else getattr(language_model, "model", None)
    head = language_model.get_output_embeddings() if hasattr(language_model, "get_output_embeddings") else None
    if decoder is None or decoder is language_model or head is None:
        return None
    config = language_model.config
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_POST_PROCESSING):
        return None
    if getattr(language_model, "final_logits_bias", None) is not None:
        return None
    return decoder, head
