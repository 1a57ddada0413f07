"""`ulixes-onnx eval`: measure protection the way the paper does (sections 5 and 6.1).

`load_dataset` checks a dataset folder and its pairs, `Evaluation(...).run()` cloaks the photos (cached
on disk) and returns the report document, and `write_report` writes report.json, report.md and plots.
"""

from ulixes_onnx.cloaking.settings import CloakSettings
from ulixes_onnx.evaluation.dataset import Dataset, DatasetError, Pair, load_dataset
from ulixes_onnx.evaluation.report import write_report
from ulixes_onnx.evaluation.runner import Evaluation, EvaluationSettings

__all__ = [
    "CloakSettings",
    "Dataset",
    "DatasetError",
    "Evaluation",
    "EvaluationSettings",
    "Pair",
    "load_dataset",
    "write_report",
]
