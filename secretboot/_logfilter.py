"""A logging filter that masks every resolved secret wherever it appears in a record.

Attach it to handlers (``handler.addFilter(SecretFilter())``) so records from
every logger are covered, or to Powertools' ``Logger`` (``logger.addFilter``).
It rewrites the record before any formatter sees it: the message and its args,
extra fields (also nested in dicts and lists), ``stack_info``, and the exception
(its message, the fields traceback prints, its whole chain of causes and the
members of groups, and the cached traceback text).
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

# BaseExceptionGroup exists from Python 3.11; 3.10 is supported.
_GROUP: type[BaseException] | None = getattr(builtins, "BaseExceptionGroup", None)
_EXCEPTION_GROUP: type[BaseException] | None = getattr(builtins, "ExceptionGroup", None)

# Attributes every LogRecord has; anything else on a record is an "extra" field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

#: Values shorter than this are masked only where they are a whole field (a log argument, an
#: extra field, an exception argument or the whole message), never inside other text. NIST
#: SP 800-63B asks 8 characters of a memorized secret and GitLab refuses to mask CI variables
#: shorter than 8; shorter masks would erase ordinary words ("ERROR", "admin", a year) from
#: every log line and tell whoever reads the logs where the secret's characters occur.
MIN_SUBSTRING_LENGTH = 8

#: What a record says when masking it failed: nothing of the original is kept.
FALLBACK_TEXT = "[masked: this log record could not be masked]"
_UNPRINTABLE = "[masked: unprintable object]"
#: Past this many exceptions reachable from one record (causes, contexts, group members), the
#: rest is cut off and replaced by a stand-in saying so; no real program chains this many.
_MAX_EXCEPTIONS = 10_000


class SecretFilter(logging.Filter):
    """Replace each secret in a log record with ``[masked:NAME]``.

    ``secrets`` maps names to values; by default the process's booted keyring,
    read at each record, so the filter can be installed before ``bootstrap()``.

    What is masked, and where:

    - A value of ``MIN_SUBSTRING_LENGTH`` (8) characters or more is masked wherever
      it appears: inside the formatted message, extra fields (nested in dicts and
      lists, and objects whose ``str()`` or ``repr()`` holds it), ``stack_info``,
      already formatted exception text, and exceptions: ``str()``, arguments,
      ``__notes__``, a ``SyntaxError``'s source line, file name and message, an
      ``OSError``'s file names, along the whole chain of ``__cause__`` and
      ``__context__`` and in every member of exception groups. An exception that
      held a secret is replaced by a stand-in of the same name (a ``SyntaxError``
      subclass for a ``SyntaxError``) carrying the masked text and the traceback.
      Overlapping values are masked as one span naming all of them
      (``[masked:A,B]``), in one pass over the original text.
    - A shorter value is masked only where it is a whole field: a log argument,
      the whole message, an extra field or an item in one, an exception's argument
      or one of the fields above; then also inside that exception's text. It is
      NOT masked inside other text: ``log.info(f"pin={pin}")`` shows a 4-digit pin,
      ``log.info("pin=%s", pin)`` masks it. This is a deliberate trade-off: masking
      ``ERROR`` or ``admin`` everywhere would erase those words from every log line
      (whoever sets such a value could erase chosen words), and every mask would
      show where a short secret's characters occur in ordinary text.
    - A value made only of whitespace (or empty) is never masked.

    A malformed call (``log.info("%s %s", one)``) is left malformed, with its
    message and each argument masked on their own, so the handler reports it
    as logging does (``--- Logging error ---`` on stderr) and the application
    goes on. The filter itself never raises: if masking fails, the message,
    arguments, exception, stack and extra fields are replaced by
    ``FALLBACK_TEXT``; if even that fails, the record is dropped.
    """

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._secrets = secrets

    def _masker(self) -> _Masker:
        if self._secrets is not None:
            secrets: Mapping[str, str] = self._secrets
        else:
            from secretboot._bootstrap import _state

            secrets = _state.keyring or {}
        return _Masker(secrets.items())

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            masker = self._masker()
            if masker:
                _mask_record(record, masker)
        except Exception:
            try:
                _replace_record(record)
            except Exception:
                return False  # fail closed: a record that cannot be masked is not passed on
        return True


def _label(names: Iterable[str]) -> str:
    return "[masked:" + ",".join(sorted(set(names))) + "]"


class _Masker:
    """The secrets of one record's masking: long values by substring, short ones as whole fields."""

    __slots__ = ("long", "short")

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self.long: list[tuple[str, tuple[str, ...]]] = []  # a value twice: two entries, one span
        self.short: dict[str, tuple[str, ...]] = {}
        for name, value in items:
            if not isinstance(value, str) or not value or value.isspace():
                continue
            if len(value) >= MIN_SUBSTRING_LENGTH:
                self.long.append((value, (name,)))
            else:
                self.short[value] = (*self.short.get(value, ()), name)

    def __bool__(self) -> bool:
        return bool(self.long or self.short)

    def text(self, text: str, also: Sequence[tuple[str, tuple[str, ...]]] = ()) -> str:
        """``text`` with every occurrence of a long value (and of ``also``) masked, in one pass.

        Occurrences are found in the original text, overlapping ones merged into one
        span named after the values not wholly inside another occurrence.
        """
        spans: list[tuple[int, int, tuple[str, ...]]] = []
        for value, names in (*self.long, *also):
            start = text.find(value)
            while start != -1:
                spans.append((start, start + len(value), names))
                start = text.find(value, start + 1)
        if not spans:
            return text
        spans.sort(key=lambda span: (span[0], -span[1]))
        parts: list[str] = []
        position = 0
        group_names: list[str] = []
        group_start, group_end, last = spans[0][0], -1, -1
        for start, end, names in spans:
            if start >= group_end and group_end != -1:
                parts += [text[position:group_start], _label(group_names)]
                position = group_end
                group_start, group_names = start, []
            if end > group_end:  # not inside an earlier occurrence: a value of its own
                group_names += names
                group_end, last = end, start
            elif end == group_end and start == last:  # the same text under another name
                group_names += names
        parts += [text[position:group_start], _label(group_names), text[group_end:]]
        return "".join(parts)

    def field(self, value: str) -> str:
        """A whole field: masked whole if it is a short value, else as text."""
        names = self.short.get(value)
        return _label(names) if names is not None else self.text(value)

    def whole(self, fields: Iterable[object]) -> list[tuple[str, tuple[str, ...]]]:
        """The short values that some of ``fields`` are equal to, to mask inside related text."""
        if not self.short:
            return []
        found = {
            field: self.short[field] for field in fields if isinstance(field, str) and field in self.short
        }
        return list(found.items())


def _mask_record(record: logging.LogRecord, masker: _Masker) -> None:
    _mask_message(record, masker)
    for key, value in list(record.__dict__.items()):
        if key not in _STANDARD:
            record.__dict__[key] = _deep(value, masker)
    if isinstance(record.__dict__.get("message"), str):  # a formatter's cached copy
        record.__dict__["message"] = masker.field(record.__dict__["message"])
    if record.stack_info:
        record.stack_info = masker.text(record.stack_info)
    if record.exc_info and record.exc_info[1] is not None:
        masked = _masked_exception(record.exc_info[1], masker)
        if masked is not record.exc_info[1]:
            record.exc_info = (type(masked), masked, record.exc_info[2])
        record.exc_text = None  # formatters cache it; make them format the masked one
    elif record.exc_text:
        record.exc_text = masker.text(record.exc_text)


def _mask_message(record: logging.LogRecord, masker: _Masker) -> None:
    msg = record.msg
    if not isinstance(msg, str):
        # Structured messages (Powertools logs dicts as JSON): mask inside.
        record.msg = _deep(msg, masker)
        record.args = _deep_args(record.args, masker)
        return
    try:
        message = record.getMessage()
    except Exception:
        # Malformed (too few arguments, a missing key, an argument whose str() fails): leave
        # it malformed for the handler to report as logging does, but masked piece by piece.
        record.msg = masker.field(msg)
        record.args = _deep_args(record.args, masker)
        return
    if masker.short and record.args:
        args = _short_args(record.args, masker)
        if args is not record.args:
            try:
                message = msg % args
            except Exception:
                message = FALLBACK_TEXT
    record.msg = masker.field(message)
    record.args = None


def _short_args(args: object, masker: _Masker) -> object:
    """``args`` with each string argument equal to a short value masked; ``args`` if none is."""
    short = masker.short
    if isinstance(args, tuple):
        if not any(isinstance(arg, str) and arg in short for arg in args):
            return args
        return tuple(_short(arg, masker) for arg in args)
    if isinstance(args, Mapping):
        if not any(isinstance(value, str) and value in short for value in args.values()):
            return args
        return {key: _short(value, masker) for key, value in args.items()}
    return args


def _short(value: object, masker: _Masker) -> object:
    if isinstance(value, str) and value in masker.short:
        return _label(masker.short[value])
    return value


def _deep_args(args: object, masker: _Masker) -> tuple[object, ...] | Mapping[str, object] | None:
    if args is None:
        return None
    if isinstance(args, Mapping):  # the keys are looked up by the format: keep them
        return {key: _deep(value, masker) for key, value in args.items()}
    if isinstance(args, (tuple, list)):
        return tuple(_deep(arg, masker) for arg in args)
    return (_deep(args, masker),)


def _deep(value: object, masker: _Masker) -> object:
    """``value`` with secrets masked in strings, containers and what objects show; unchanged if clean."""
    if isinstance(value, str):
        return masker.field(value)
    if isinstance(value, (int, float)) or value is None:  # bool is an int
        return value
    if isinstance(value, Mapping):
        items = [(_deep(key, masker), _deep(item, masker), key, item) for key, item in value.items()]
        if all(new_key is key and new_item is item for new_key, new_item, key, item in items):
            return value
        return {new_key: new_item for new_key, new_item, _, _ in items}
    if isinstance(value, (list, tuple, set, frozenset)):
        originals = list(value)
        masked = [_deep(item, masker) for item in originals]
        if all(a is b for a, b in zip(originals, masked, strict=True)):
            return value
        return _rebuild(value, masked)
    if isinstance(value, BaseException):
        text = _exception_text(value, masker)
        return value if text is None else text
    # Any other object is shown through str() (formatters) or repr() (logging's error report,
    # containers): replace it by its masked text if either holds a secret.
    text = _shown(value, str)
    represented = _shown(value, repr)
    if text is None and represented is None:
        return _UNPRINTABLE
    if text is None:
        assert represented is not None
        masked_repr = masker.field(represented)
        return value if masked_repr == represented else masked_repr
    masked_text = masker.field(text)
    if masked_text != text or (represented is not None and masker.field(represented) != represented):
        return masked_text
    return value


def _rebuild(
    original: list[object] | tuple[object, ...] | set[object] | frozenset[object], items: list[object]
) -> object:
    kind = type(original)
    make: Callable[[list[object]], object] | None = getattr(original, "_make", None)  # a namedtuple
    try:
        return make(items) if make is not None else kind(items)
    except Exception:
        for base in (list, tuple, set, frozenset):
            if isinstance(original, base):
                return base(items)
        raise


def _shown(value: object, how: Callable[[object], str]) -> str | None:
    try:
        return how(value)
    except Exception:
        return None


# -- exceptions ----------------------------------------------------------------------------------


def _children(exc: BaseException) -> list[BaseException]:
    children = [link for link in (exc.__cause__, exc.__context__) if isinstance(link, BaseException)]
    if _GROUP is not None and isinstance(exc, _GROUP):
        children += [member for member in getattr(exc, "exceptions", ()) if isinstance(member, BaseException)]
    return children


# What traceback formatting prints of an exception besides str(exc) (SyntaxError's source line,
# file name and message) and the fields str(exc) is made of (OSError, exception groups).
_PRINTED = ("filename", "filename2", "strerror", "text", "msg", "message")


class _Shown:
    """What traceback formatting prints of one exception, masked."""

    __slots__ = ("changed", "filename", "message", "msg", "notes", "source")

    def __init__(self, exc: BaseException, masker: _Masker) -> None:
        raw_notes = getattr(exc, "__notes__", None)
        notes: list[object] = list(raw_notes) if isinstance(raw_notes, (list, tuple)) else []
        printed = [_attribute(exc, name) for name in _PRINTED]
        # A short value that is a whole field of this exception is masked anywhere in its text.
        also = masker.whole([*exc.args, *notes, *printed])

        def mask(value: object) -> object:
            if not isinstance(value, str):
                return value
            return masker.field(value) if value in masker.short else masker.text(value, also)

        text = _shown(exc, str)
        self.message = "<exception str() failed>" if text is None else masker.text(text, also)
        self.notes = [mask(note) for note in notes]
        self.changed = (text is not None and self.message != text) or any(
            isinstance(value, str) and mask(value) != value for value in (*exc.args, *notes, *printed)
        )
        self.source: object = None
        self.filename: object = None
        self.msg: object = None
        if isinstance(exc, SyntaxError):
            self.source, self.filename, self.msg = mask(exc.text), mask(exc.filename), mask(exc.msg)
        elif _is_group(exc):
            self.msg = mask(getattr(exc, "message", ""))


def _attribute(exc: BaseException, name: str) -> object:
    try:
        return getattr(exc, name, None)
    except Exception:  # a property that fails: traceback does not print it either
        return None


def _exception_text(exc: BaseException, masker: _Masker) -> str | None:
    """The masked ``str()`` of an exception used as a message or field, or None if it holds nothing."""
    shown = _Shown(exc, masker)
    return shown.message if shown.changed else None


def _masked_exception(root: BaseException, masker: _Masker) -> BaseException:
    """``root`` if nothing reachable from it holds a secret, else a stand-in with masked text.

    The graph of causes, contexts and group members is walked without recursion and
    without looping on cycles. Every exception that holds a secret, or leads to one
    that does, is replaced by a stand-in of the same name and module that keeps the
    traceback and the (masked) links, so logs still say what went wrong and where.
    """
    found: dict[int, BaseException] = {}
    order: list[BaseException] = []
    stack = [root]
    while stack:
        exc = stack.pop()
        if id(exc) in found:
            continue
        if len(order) >= _MAX_EXCEPTIONS:
            break
        found[id(exc)] = exc
        order.append(exc)
        stack.extend(child for child in reversed(_children(exc)) if id(child) not in found)

    shown: dict[int, _Shown] = {}
    parents: dict[int, list[BaseException]] = {}
    replace: list[BaseException] = []
    for exc in order:
        shown[id(exc)] = _Shown(exc, masker)
        children = _children(exc)
        for child in children:
            parents.setdefault(id(child), []).append(exc)
        # Past the bound, or holding a secret: replaced (the cut-off links become stand-ins).
        if shown[id(exc)].changed or any(id(child) not in found for child in children):
            replace.append(exc)
    needed: set[int] = set()
    while replace:
        exc = replace.pop()
        if id(exc) in needed:
            continue
        needed.add(id(exc))
        replace.extend(parent for parent in parents.get(id(exc), ()) if id(parent) not in needed)
    if id(root) not in needed:
        return root

    cut = _CutOff(f"[masked: exceptions past the first {_MAX_EXCEPTIONS} not shown]")
    standins: dict[int, BaseException] = {}

    def link(exc: BaseException | None) -> BaseException | None:
        if exc is None:
            return None
        if id(exc) not in found:
            return cut
        return standins.get(id(exc), exc)

    # Groups take their members when made: make members first (members cannot contain their group).
    for exc in _members_first([exc for exc in order if id(exc) in needed], found):
        members = [link(member) for member in getattr(exc, "exceptions", ())] if _is_group(exc) else None
        standins[id(exc)] = _standin(exc, shown[id(exc)], members)
    for exc in order:
        standin = standins.get(id(exc))
        if standin is not None:
            standin.__cause__ = link(exc.__cause__)
            standin.__context__ = link(exc.__context__)
            standin.__suppress_context__ = exc.__suppress_context__
    return standins[id(root)]


def _is_group(exc: BaseException) -> bool:
    return _GROUP is not None and isinstance(exc, _GROUP)


def _members_first(needed: list[BaseException], found: Mapping[int, BaseException]) -> list[BaseException]:
    """``needed`` ordered so that every group comes after the members it contains."""
    wanted = {id(exc) for exc in needed}
    done: set[int] = set()
    ordered: list[BaseException] = []
    for top in needed:
        stack: list[tuple[BaseException, bool]] = [(top, False)]
        while stack:
            exc, expanded = stack.pop()
            if id(exc) in done:
                continue
            if expanded or not _is_group(exc):
                done.add(id(exc))
                ordered.append(exc)
                continue
            stack.append((exc, True))
            for member in getattr(exc, "exceptions", ()):
                if id(member) in wanted and id(member) in found and id(member) not in done:
                    stack.append((member, False))
    return ordered


def _standin(exc: BaseException, shown: _Shown, members: list[BaseException | None] | None) -> BaseException:
    original = type(exc)
    namespace = {"__module__": original.__module__, "__qualname__": original.__qualname__}
    standin: BaseException
    if members is not None and _GROUP is not None:
        base = _EXCEPTION_GROUP if isinstance(exc, Exception) and _EXCEPTION_GROUP is not None else _GROUP
        group_type = type(original.__name__, (base,), namespace)
        message = shown.msg if isinstance(shown.msg, str) else ""
        standin = group_type(message, [member for member in members if member is not None])
    elif isinstance(exc, SyntaxError):
        source = shown.source if isinstance(shown.source, str) or shown.source is None else None
        moved = source != exc.text  # masked text: the caret's columns no longer apply
        details = (
            shown.filename,
            exc.lineno,
            None if moved else exc.offset,
            source,
            exc.end_lineno,
            None if moved else exc.end_offset,
        )
        standin = type(original.__name__, (_MaskedSyntaxError,), namespace)(shown.msg, details)
    else:
        standin = type(original.__name__, (_MaskedException,), namespace)(shown.message)
    standin.__traceback__ = exc.__traceback__
    if shown.notes:
        setattr(standin, "__notes__", shown.notes)  # noqa: B010 - a 3.11 attribute; 3.10 is supported
    return standin


class _MaskedException(Exception):
    """Base of the stand-ins for exceptions whose text held a secret."""


class _MaskedSyntaxError(SyntaxError):
    """Base of the stand-ins for syntax errors: traceback prints their source line and file name."""


class _CutOff(_MaskedException):
    """Stands for the exceptions past ``_MAX_EXCEPTIONS``, which were not looked at."""


def _replace_record(record: logging.LogRecord) -> None:
    """Masking failed: keep nothing of the record's own text."""
    record.msg = FALLBACK_TEXT
    record.args = None
    record.exc_info = None
    record.exc_text = None
    record.stack_info = None
    for key in list(record.__dict__):
        if key not in _STANDARD or key == "message":
            record.__dict__[key] = FALLBACK_TEXT
