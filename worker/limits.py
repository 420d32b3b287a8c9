"""What a worker sends must fit in one frame of the broker's (its ``welcome``'s ``max_frame``).

A frame over the limit is not refused on its own: the broker closes the connection, which would
hand back every job the worker holds. So a result or progress value too large fails only its own
job (``ResultTooLarge``), and a failure's error text is shortened to fit.
"""

from __future__ import annotations

from typing import Final

import msgspec

from conveyor.protocol import Ack, Fail, JobError

from .errors import ResultTooLarge

__all__ = ["VALUE_SLACK", "check_progress", "fit_failure", "result_too_large"]

_encoder: Final = msgspec.msgpack.Encoder()

VALUE_SLACK: Final = 64
"""Bytes an ``ack`` or ``progress`` message adds to its value, at most (49 in fact): a value
this far under the limit is not measured again."""
_ERROR_SLACK: Final = 512
"""Bytes a ``fail`` message adds to its error's type, message and traceback, at most."""
_CUT_MARK: Final = 64
"""Room kept for the note that says how much of a text was cut (bytes)."""


def result_too_large(job_id: int, ack: Ack, max_frame: int) -> ResultTooLarge | None:
    """``ResultTooLarge`` when ``ack`` does not fit in a frame of ``max_frame`` bytes, else
    None."""
    return _too_large("result", job_id, ack, ack.result, max_frame)


def check_progress(job_id: int, message: object, value: msgspec.Raw, max_frame: int) -> None:
    """Raise ``ResultTooLarge`` when the ``progress`` ``message`` carrying ``value`` does not
    fit in a frame of ``max_frame`` bytes."""
    too_large = _too_large("progress value", job_id, message, value, max_frame)
    if too_large is not None:
        raise too_large


def _too_large(what: str, job_id: int, message: object, value: msgspec.Raw,
               max_frame: int) -> ResultTooLarge | None:
    """``ResultTooLarge`` naming ``what`` when ``message``, carrying ``value``, does not fit in
    a frame of ``max_frame`` bytes, else None."""
    if len(value) + VALUE_SLACK <= max_frame or len(_encoder.encode(message)) <= max_frame:
        return None
    return ResultTooLarge(f"{what} of job {job_id} is {len(value):,} bytes encoded; the "
                          f"broker's frame limit is {max_frame:,} bytes")


def fit_failure(fail: Fail, max_frame: int) -> Fail:
    """``fail``, with its error message and traceback shortened when it would not fit in a frame
    of ``max_frame`` bytes: the message keeps its start, the traceback its start and its end
    (the outer calls, and the inner ones where the error was raised), each with a note of how
    much was cut."""
    error = fail.error
    # A character takes at most 4 bytes in UTF-8.
    if 4 * (len(error.type) + len(error.message) + len(error.traceback)) + _ERROR_SLACK \
            <= max_frame:
        return fail
    message = error.message.encode()
    trace = error.traceback.encode()
    room = max_frame - (len(_encoder.encode(fail)) - len(message) - len(trace)) - 2 * _CUT_MARK
    if room >= len(message) + len(trace):
        return fail
    room = max(room, 0)
    message_room = min(len(message), max(room // 2, room - len(trace)))
    trace_room = room - message_room
    shortened = JobError(type=error.type, message=_keep_start(message, message_room),
                         traceback=_keep_ends(trace, trace_room))
    return msgspec.structs.replace(fail, error=shortened)


def _keep_start(text: bytes, room: int) -> str:
    if len(text) <= room:
        return text.decode()
    return text[:room].decode(errors="ignore") + f" [{len(text) - room:,} bytes cut]"


def _keep_ends(text: bytes, room: int) -> str:
    if len(text) <= room:
        return text.decode()
    head = room // 2
    tail = room - head
    return (text[:head].decode(errors="ignore") + f" [{len(text) - room:,} bytes cut] "
            + text[len(text) - tail:].decode(errors="ignore"))
