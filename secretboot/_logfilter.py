"""A logging filter that masks every resolved secret wherever it appears in a record.

Attach it to handlers (``handler.addFilter(SecretFilter())``) so records from
every logger are covered, or to Powertools' ``Logger`` (``logger.addFilter``).
It rewrites the record before any formatter sees it: the message and its args,
extra fields (also nested in dicts and lists), ``stack_info``, and the exception
(its message, its chained causes and the cached traceback text).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

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
    return value


def _masked_exception(exc: BaseException, mask: Callable[[str], str], depth: int = 0) -> BaseException:
    """``exc`` if nothing in it is secret, else a stand-in of the same name with masked text.

    The stand-in keeps the class's name and module, the traceback and the
    (masked) chain of causes, so logs still say what went wrong and where.
    """
    text = str(exc)
    masked = mask(text)
    cause = exc.__cause__ if depth < 10 else None
    context = exc.__context__ if depth < 10 else None
    new_cause = _masked_exception(cause, mask, depth + 1) if cause is not None else None
    new_context = _masked_exception(context, mask, depth + 1) if context is not None else None
    if masked == text and new_cause is cause and new_context is context:
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
    return standin


class _MaskedException(Exception):
    """Base of the stand-ins for exceptions whose text held a secret."""
