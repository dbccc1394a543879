"""A logging filter that masks every resolved secret wherever it appears in a record.

Attach it to handlers (``handler.addFilter(SecretFilter())``) so records from
every logger are covered, or to Powertools' ``Logger`` (``logger.addFilter``).
It rewrites the record before any formatter sees it: the message and its args,
extra fields (also nested in dicts and lists), ``stack_info``, and the exception
(its message, its chained causes and the cached traceback text).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Mapping

# BaseExceptionGroup exists from Python 3.11; 3.10 is supported.
_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None)

# Attributes every LogRecord has; anything else on a record is an "extra" field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class SecretFilter(logging.Filter):
    """Replace each secret in a log record with ``[masked:NAME]``. Never drops a record.

    ``secrets`` maps names to values; by default the process's booted keyring,
    read at each record, so the filter can be installed before ``bootstrap()``.
    """

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._secrets = secrets

    def _pairs(self) -> list[tuple[str, str]]:
        if self._secrets is not None:
            secrets: Mapping[str, str] = self._secrets
        else:
            from secretboot._bootstrap import _state

            secrets = _state.keyring or {}
        # Longest first, so a secret containing another is masked whole.
        pairs = [(value, f"[masked:{name}]") for name, value in secrets.items() if value]
        return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        pairs = self._pairs()
        if not pairs:
            return True

        def mask(text: str) -> str:
            for value, replacement in pairs:
                if value in text:
                    text = text.replace(value, replacement)
            return text

        if isinstance(record.msg, str):
            record.msg = mask(record.getMessage())
            record.args = None
        else:
            # Structured messages (Powertools logs dicts as JSON): mask inside.
            record.msg = _deep(record.msg, mask)
            if isinstance(record.args, Mapping):
                record.args = {k: _deep(v, mask) for k, v in record.args.items()}
            elif record.args:
                record.args = tuple(_deep(arg, mask) for arg in record.args)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                record.__dict__[key] = _deep(value, mask)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_info = (
                record.exc_info[0],
                _masked_exception(record.exc_info[1], mask),
                record.exc_info[2],
            )
            record.exc_text = None  # formatters cache it; make them format the masked one
        elif record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


def _deep(value: object, mask: Callable[[str], str]) -> object:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {_deep(k, mask): _deep(v, mask) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_deep(item, mask) for item in value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    # Any other object is shown by formatters through str(): an exception logged
    # as the message, an object in ``extra``. Replace it only if that text holds a secret.
    try:
        text = str(value)
    except Exception:
        return value
    masked = mask(text)
    return value if masked == text else masked


def _masked_exception(exc: BaseException, mask: Callable[[str], str], depth: int = 0) -> BaseException:
    """``exc`` if nothing in it is secret, else a stand-in of the same name with masked text.

    The stand-in keeps the class's name and module, the traceback and the
    (masked) chain of causes, so logs still say what went wrong and where.
    """
    text = str(exc)
    masked = mask(text)
    notes = list(getattr(exc, "__notes__", None) or ())
    masked_notes = [mask(note) if isinstance(note, str) else note for note in notes]
    group = _masked_group(exc, mask, depth)
    if group is not None:
        return group
    cause = exc.__cause__ if depth < 10 else None
    context = exc.__context__ if depth < 10 else None
    new_cause = _masked_exception(cause, mask, depth + 1) if cause is not None else None
    new_context = _masked_exception(context, mask, depth + 1) if context is not None else None
    if masked == text and masked_notes == notes and new_cause is cause and new_context is context:
        return exc
    standin_type = type(
        type(exc).__name__,
        (_MaskedException,),
        {"__module__": type(exc).__module__, "__qualname__": type(exc).__qualname__},
    )
    standin: BaseException = standin_type(masked)
    standin.__traceback__ = exc.__traceback__
    standin.__cause__ = new_cause
    standin.__context__ = new_context
    standin.__suppress_context__ = exc.__suppress_context__
    if masked_notes:
        setattr(standin, "__notes__", masked_notes)  # noqa: B010 - a 3.11 attribute; 3.10 is supported
    return standin


def _masked_group(exc: BaseException, mask: Callable[[str], str], depth: int) -> BaseException | None:
    """A masked copy of an exception group whose message or members held a secret, else None."""
    if _GROUP is None or not isinstance(exc, _GROUP) or depth >= 10:
        return None
    members: list[BaseException] = list(getattr(exc, "exceptions", ()))
    masked_members = [_masked_exception(member, mask, depth + 1) for member in members]
    message = str(getattr(exc, "message", ""))
    if mask(message) == message and all(a is b for a, b in zip(members, masked_members, strict=True)):
        return None
    # The group's own class may not accept these arguments; a plain group keeps the shape.
    copy = _GROUP(mask(message), masked_members)
    copy.__traceback__ = exc.__traceback__
    return copy


class _MaskedException(Exception):
    """Base of the stand-ins for exceptions whose text held a secret."""
