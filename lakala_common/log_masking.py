"""Masks digit runs in every log line of the process: phone tails, phone numbers and
anything else a merchant typed must not reach a log file in clear.

Installed as the logging module's record factory, so it covers every logger and handler,
including Rasa's and Sanic's, and the text of logged exceptions. Runs of four or more
digits (ASCII or full-width, a single space or dash allowed between them: 6721, 67 21,
６７２１, 138-0000-6721) become ****. Ports and years in log lines are masked too; that is the price.
"""
from __future__ import annotations

import logging
import re
import traceback
from typing import Any

MASK = "****"
DIGIT = "[0-9０-９]"
DIGIT_RUN = re.compile(rf"(?<!{DIGIT}){DIGIT}(?:[ \u3000-]?{DIGIT}){{3,}}(?!{DIGIT})")


def mask_digits(text: str) -> str:
    return DIGIT_RUN.sub(MASK, text)


class _MaskedRecord(logging.LogRecord):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.exc_info and self.exc_info[0] is not None:
            self.exc_text = mask_digits("".join(traceback.format_exception(*self.exc_info)).rstrip("\n"))

    def getMessage(self) -> str:  # noqa: N802 (logging's name)
        return mask_digits(super().getMessage())


def install() -> None:
    """Idempotent: every record created from now on is masked."""
    if logging.getLogRecordFactory() is not _MaskedRecord:
        logging.setLogRecordFactory(_MaskedRecord)
