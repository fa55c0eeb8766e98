"""Benchmarks in their released formats, official metrics and the evaluation runner.

``run_eval`` asks a model a benchmark's questions (resumably) and scores them;
``score_predictions`` scores answers made elsewhere; ``BENCHMARKS`` lists what can be run.
"""

from eval.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from eval.loaders import EmbeddedImage, Question
from eval.runner import EvalResult, generate_answers, read_predictions, run_eval, score_predictions

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EmbeddedImage",
    "EvalResult",
    "Question",
    "generate_answers",
    "get_benchmark",
    "read_predictions",
    "run_eval",
    "score_predictions",
]
