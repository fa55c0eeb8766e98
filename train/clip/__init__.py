"""Train a small CLIP offline with open_clip's own trainer, for use as a frozen vision tower.

No pretrained CLIP downloads here, so the offline recipe trains one contrastively on
image-caption pairs (e.g. the synthetic shapes captions):

    captions.json (LLaVA format) --write_clip_csv--> clip.csv (filepath <TAB> title)
        --train_clip--> open_clip_train.main (--dataset-type csv, fp32)
        --> OUT/open_clip_model.safetensors + OUT/open_clip_config.json

``OUT`` is an open_clip "local-dir" model folder: ``open_clip.create_model("local-dir:OUT")``
loads the whole CLIP, and ``vision.load_vision_tower(None, pretrained=OUT/open_clip_model.safetensors,
model_config=...)`` the frozen image tower. The folder appears complete or not at all; calling
``train_clip`` again with the same arguments reuses it.

Also runnable as ``python -m train.clip {csv,train} ...`` (``--help`` for the options).

The parts: ``pairs`` (the CSV), ``folder`` (the output layout, model configs), ``training``
(``train_clip``), ``cli``.
"""

from train.clip.cli import main
from train.clip.folder import CONFIG_NAME, DEFAULT_MODEL_CONFIG, RECORD_NAME, WEIGHTS_NAME, load_model_config
from train.clip.pairs import CSV_CAPTION_KEY, CSV_IMAGE_KEY, CSV_SEPARATOR, write_clip_csv
from train.clip.training import DEFAULT_AUGMENTATION, train_clip

__all__ = [
    "CONFIG_NAME",
    "CSV_CAPTION_KEY",
    "CSV_IMAGE_KEY",
    "CSV_SEPARATOR",
    "DEFAULT_AUGMENTATION",
    "DEFAULT_MODEL_CONFIG",
    "RECORD_NAME",
    "WEIGHTS_NAME",
    "load_model_config",
    "main",
    "train_clip",
    "write_clip_csv",
]
