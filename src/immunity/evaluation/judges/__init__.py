"""Judges score batches of (request, response) records; one file each (see `base`)."""

from .base import (
    REFUSAL_KEYWORDS,
    Judge,
    JudgeSettings,
    check_judge,
    judge_choices,
    keyword_refused,
    make_judge,
    says_something,
    task_correct,
)

__all__ = [
    "REFUSAL_KEYWORDS",
    "Judge",
    "JudgeSettings",
    "check_judge",
    "judge_choices",
    "keyword_refused",
    "make_judge",
    "says_something",
    "task_correct",
]
