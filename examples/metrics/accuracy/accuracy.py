"""Accuracy as a local ``evaluate`` metric module, so examples run with the Hub offline.

``evaluate.load("accuracy")`` downloads the module from the Hub; this file implements the
same metric (same inputs, same ``{"accuracy": ...}`` output) and loads from disk:

    >>> import evaluate
    >>> metric = evaluate.load("examples/metrics/accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among all predictions:
accuracy = (number of predictions equal to their reference) / (number of predictions).
With `normalize=False` the number of correct predictions is returned instead, and
`sample_weight` weights each prediction.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    normalize (`bool`): If False, return the number (or total weight) of correct predictions
        instead of the fraction. Defaults to True.
    sample_weight (`list` of `float`): Weight of each prediction. Defaults to None (all 1).

Returns:
    accuracy (`float` or `int`): The fraction of correct predictions in [0, 1], or their
        count (total weight) when normalize=False.

Examples:
    >>> metric = evaluate.load("examples/metrics/accuracy")
    >>> metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0])
    {'accuracy': 0.5}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Fraction (or count) of predictions equal to their reference label."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://en.wikipedia.org/wiki/Accuracy_and_precision"],
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None) -> dict[str, float]:
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
        weights = np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if weights.shape != predictions.shape:
            raise ValueError(f"sample_weight {weights.shape} does not match predictions {predictions.shape}")
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": int(correct) if sample_weight is None else correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total > 0 else float("nan")}
