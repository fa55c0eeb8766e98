"""Export to the ecosystem: ``vlm export MODEL --to llava --out DIR``.

A model trained here becomes a transformers-native ``LlavaForConditionalGeneration`` folder (the
layout of the LLaVA-HF checkpoints on the Hub, which vLLM, SGLang and lmms-eval read), checked
against our model before it is kept. The parts, each one concern:

- ``keymap``: our weight names -> LLaVA's, as data, plus the special transforms (open_clip's fused
  q/k/v split, the identity ``linear_2`` of a ``linear`` projector) and the Hub's names;
- ``config``: ``VLMConfig`` -> ``LlavaConfig`` (CLIP vision config read off the tower, feature layer, CLS);
- ``processor``: ``VLMProcessor`` -> ``LlavaProcessor`` (CLIP image processor, tokenizer, chat template);
- ``model``: the in-memory ``LlavaForConditionalGeneration`` (also the speed benchmark's reference);
- ``parity``: pixels, logits and greedy tokens compared; ``writer``: the files; ``export``: the command.
"""

from apps.export.export import export
from apps.export.keymap import ExportError
from apps.export.model import build_llava

__all__ = ["ExportError", "build_llava", "export"]
