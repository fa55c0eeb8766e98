"""Conversations read straight from the files people already have: LLaVA JSON/JSONL, MiniMind-V JSONL/Parquet.

Formats (``format=`` names; ``"auto"`` picks one from the file's first bytes and first records):

- ``llava-json``: a top-level JSON array, as LLaVA ships ``blip_laion_cc_sbu_558k.json`` and
  ``llava_v1_5_mix665k.json``: ``{"id", "image": "a.jpg" | ["a.jpg", ...] (optional),
  "conversations": [{"from": "human" | "gpt" | "system", "value": "...<image>..."}]}``.
- ``llava-jsonl``: the same records, one per line.
- ``minimind-jsonl``: ``{"conversations": [{"role": "user" | "assistant" | "system", "content": ...}],
  "image": "a.jpg, b.jpg"}`` (several images in one comma-separated string; no id).
- ``minimind-parquet``: columns ``conversations`` (the turn list as a JSON string) and
  ``image_bytes`` (encoded image bytes, or a list of them for several images).

Nothing is loaded whole. JSON files are indexed once into byte ranges of their records (numpy
arrays) and each ``dataset[i]`` reads and parses one record; Parquet is read one row group at a
time. File handles open lazily in each process, so DataLoader workers share the index pages
instead of copying a table each.

Record numbers in messages and in ``Sample.index`` are 0-based positions in their file; line
numbers of JSONL files are 1-based, as editors show them.

The parts: ``sample`` (the ``Sample`` and the errors), ``index`` (byte ranges of JSON / JSONL
records), ``records`` (reading one record of a JSON, JSONL or Parquet file), ``formats``
(LLaVA vs MiniMind-V turns and images), ``files`` (one data file, its format detected),
``conversations`` (the dataset), ``validation`` (the check before training). What the rest of
the code uses is re-exported here.
"""

from train.data.conversations import ConversationDataset, SubsetDataset
from train.data.sample import FORMATS, BadSampleError, DataFormatError, ImageRef, Sample
from train.data.validation import ValidationReport, validate

__all__ = [
    "FORMATS",
    "BadSampleError",
    "ConversationDataset",
    "DataFormatError",
    "ImageRef",
    "Sample",
    "SubsetDataset",
    "ValidationReport",
    "validate",
]
