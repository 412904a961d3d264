"""Instants and delays every backend can store, or a clear error before any write.

MySQL's DATETIME holds years 1000 to 9999 and Python's datetime stops at 9999: an instant
outside that range, or a delay that would carry one there, is refused on every backend alike
rather than stored by one and unreadable (or refused differently) by another.
"""

from __future__ import annotations

import math
import numbers
from datetime import UTC, datetime

from .errors import PayloadError

EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
# A thousand years: any due time it gives stays below LATEST for the next seven millennia.
MAX_DELAY = 1000 * 365.25 * 86400


def check_instant(moment: datetime, *, what: str) -> datetime:
    """An aware datetime inside the storable range; naive datetimes name no instant."""
    if not isinstance(moment, datetime):
        raise PayloadError(f"{what} must be a datetime, got {type(moment).__name__} {moment!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PayloadError(
            f"{what} is a naive datetime ({moment.isoformat()}); give it a timezone "
            "(e.g. datetime.now(timezone.utc)) so every worker reads the same instant."
        )
    try:
        inside = EARLIEST <= moment < LATEST
    except OverflowError:  # an offset that carries it past datetime's own range
        inside = False
    if not inside:
        raise PayloadError(
            f"{what} is {moment.isoformat()}, outside the instants every backend stores "
            f"(from {EARLIEST.date()} until before {LATEST.date()} UTC)"
        )
    return moment


def check_delay(
    seconds: float, *, what: str, error: type[Exception] = PayloadError, zero: bool = True
) -> float:
    """A finite number of seconds, at least 0 (above 0 unless ``zero``), at most MAX_DELAY."""
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise error(f"{what} must be a number of seconds, got {type(seconds).__name__} {seconds!r}")
    low = ">= 0" if zero else "> 0"
    too_long = (
        f"more than the {MAX_DELAY:g} seconds (a thousand years) zart accepts: its due time "
        "could pass the latest instant every backend stores"
    )
    try:
        value = float(seconds)
    except OverflowError:  # an int beyond any float
        if seconds < 0:
            raise error(f"{what} must be a finite number {low}, got a negative int") from None
        raise error(f"{what} is an int of {len(str(seconds))} digits, {too_long}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise error(f"{what} must be a finite number {low}, got {seconds!r}")
    if value > MAX_DELAY:
        raise error(f"{what} is {value:g} seconds, {too_long}")
    return value
