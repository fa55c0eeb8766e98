"""A LLaVA / MiniMind-V style vision-language model on transformers.

Importing this package registers the classes with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(folder)`` and ``AutoProcessor.from_pretrained(folder)``
load a saved VLM without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, AutoProcessor

from vlm.builder import build_vlm
from vlm.configuration import VLMConfig
from vlm.image_processing import VLMImageProcessor
from vlm.modeling import VLMForCausalLM
from vlm.processing import VLMProcessor

AutoConfig.register(VLMConfig.model_type, VLMConfig, exist_ok=True)
AutoModelForCausalLM.register(VLMConfig, VLMForCausalLM, exist_ok=True)
# One class for both backends: the pixels come from open_clip's transform either way.
AutoImageProcessor.register(
    VLMConfig, image_processor_classes={"pil": VLMImageProcessor, "torchvision": VLMImageProcessor}, exist_ok=True
)
AutoProcessor.register(VLMConfig, VLMProcessor, exist_ok=True)

__all__ = ["VLMConfig", "VLMForCausalLM", "VLMImageProcessor", "VLMProcessor", "build_vlm"]
