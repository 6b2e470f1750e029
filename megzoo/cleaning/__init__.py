"""Find mislabelled, broken and duplicated images in an image folder (``megzoo clean``; docs/cleaning.md).

    result = megzoo.find_label_issues("data", method="kfold", folds=5, out="clean")
    result.label_issue_paths[:10]          # the likeliest label errors, worst first

Modules: :mod:`.dataset` (the images and their labels), :mod:`.health` (OpenCV checks),
:mod:`.probabilities` (kfold / probe / given), :mod:`.label_issues` (cleanlab, the array-level
core), :mod:`.report` (the files written), :mod:`.clean` (the pass over a folder). cleanlab and
scikit-learn are the optional extra ``megzoo[clean]``, imported when a pass runs.
"""
from .clean import METHODS, CleaningResult, find_label_issues
from .dataset import CleaningInputError, LabeledImages, scan_folder
from .health import check_images, health_flags
from .label_issues import LabelIssues, argmax_issues, label_issues

__all__ = ["find_label_issues", "CleaningResult", "METHODS", "CleaningInputError", "LabeledImages", "scan_folder",
           "check_images", "health_flags", "LabelIssues", "label_issues", "argmax_issues"]
