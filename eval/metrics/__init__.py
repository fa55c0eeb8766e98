"""Official benchmark metrics, each as its benchmark's own script computes it.

Pure Python (no torch). One module per benchmark family; each rule names the official source
it follows (the synthetic shapes benchmark's scorer, ``shapes``, is this project's own). Units:
accuracy-like rates are percentages in [0, 100], except per-question VQA accuracy and MME's
acc / acc+ (fractions, as the official scripts keep them); MME scores are points (max 2000
perception, 800 cognition); BLEU and CIDEr-D are raw pycocoevalcap values.
"""

from eval.metrics.caption import (
    CaptionScores,
    caption_scores,
    coco_candidates,
    coco_references,
    ptb_tokenize,
    tokenize_captions,
)
from eval.metrics.gqa import GQARecord, GQAScore, gqa_score, normalize_gqa_prediction
from eval.metrics.mmbench import (
    MMBenchRecord,
    MMBenchRotation,
    MMBenchScore,
    circular_rotations,
    extract_mmbench_option,
    format_mmbench_question,
    mmbench_circular_score,
    present_options,
)
from eval.metrics.mme import (
    COGNITION_SUBTASKS,
    PERCEPTION_SUBTASKS,
    MMEQuestion,
    MMEScore,
    MMESubtaskScore,
    mme_score,
    mme_subtask_score,
    parse_mme_answer,
    read_mme_benchmark,
    read_mme_results_dir,
    read_mme_results_file,
)
from eval.metrics.nlvr import NLVRScore, majority_class_baseline, parse_nlvr_answer, parse_nlvr_official, score_nlvr
from eval.metrics.pope import PopeMetrics, PopeRecord, parse_pope_answer, pope_metrics, pope_score
from eval.metrics.scienceqa import (
    ScienceQARecord,
    ScienceQAScore,
    build_scienceqa_prompt,
    parse_scienceqa_answer,
    scienceqa_score,
)
from eval.metrics.shapes import normalize_shapes_answer, score_shapes
from eval.metrics.vqa import (
    VQARecord,
    VQAScore,
    normalize_m4c_answer,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_score,
)

__all__ = [
    "COGNITION_SUBTASKS",
    "PERCEPTION_SUBTASKS",
    "CaptionScores",
    "GQARecord",
    "GQAScore",
    "MMBenchRecord",
    "MMBenchRotation",
    "MMBenchScore",
    "MMEQuestion",
    "MMEScore",
    "MMESubtaskScore",
    "NLVRScore",
    "PopeMetrics",
    "PopeRecord",
    "ScienceQARecord",
    "ScienceQAScore",
    "VQARecord",
    "VQAScore",
    "build_scienceqa_prompt",
    "caption_scores",
    "circular_rotations",
    "coco_candidates",
    "coco_references",
    "extract_mmbench_option",
    "format_mmbench_question",
    "gqa_score",
    "majority_class_baseline",
    "mmbench_circular_score",
    "mme_score",
    "mme_subtask_score",
    "normalize_gqa_prediction",
    "normalize_m4c_answer",
    "normalize_shapes_answer",
    "normalize_vqa_answer",
    "parse_mme_answer",
    "parse_nlvr_answer",
    "parse_nlvr_official",
    "parse_pope_answer",
    "parse_scienceqa_answer",
    "pope_metrics",
    "pope_score",
    "present_options",
    "ptb_tokenize",
    "read_mme_benchmark",
    "read_mme_results_dir",
    "read_mme_results_file",
    "scienceqa_score",
    "score_nlvr",
    "score_shapes",
    "tokenize_captions",
    "vqa_accuracy",
    "vqa_score",
]
