"""secretboot.SecretFilter on real logging handlers: what it masks, where, and what it leaves.

Every test logs through a ``StreamHandler`` writing to ``io.StringIO`` with a ``Formatter``
(the path a record takes in an application) and checks the text that comes out: the canary
is absent and the mask is present.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator, Mapping

import pytest

from secretboot._logfilter import MIN_SUBSTRING_LENGTH, SecretFilter

CANARY = "CANARY-7f3a9c2e1b5d"  # long enough to be masked wherever it appears
MASK = "[masked:TOKEN]"
FORMAT = "%(levelname)s %(name)s %(message)s"


class Captured:
    def __init__(self, logger: logging.Logger, stream: io.StringIO) -> None:
        self.logger = logger
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def make_logger(request: pytest.FixtureRequest) -> Iterator[object]:
    made: list[logging.Logger] = []

    def make(secrets: Mapping[str, str], fmt: str = FORMAT) -> Captured:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(fmt))
        handler.addFilter(SecretFilter(secrets))
        logger = logging.getLogger(f"test_logfilter.{request.node.name}.{len(made)}")
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        made.append(logger)
        return Captured(logger, stream)

    yield make
    for logger in made:
        logger.handlers = []


def _log(make_logger: object, secrets: Mapping[str, str] | None = None, fmt: str = FORMAT) -> Captured:
    assert callable(make_logger)
    captured = make_logger({"TOKEN": CANARY} if secrets is None else secrets, fmt)
    assert isinstance(captured, Captured)
    return captured


def _chain(depth: int) -> BaseException:
    """An exception whose chain of causes is ``depth`` long, the secret in the innermost one."""
    error: BaseException = ValueError(f"innermost holds {CANARY}")
    for level in range(depth):
        outer = RuntimeError(f"level {level}")
        outer.__cause__ = error
        error = outer
    return error


# -- item 7: exception chains and groups, however deep ----------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 9, 10, 11, 12, 50, 3000])
def test_a_secret_deep_in_a_chain_of_causes_is_masked(make_logger: object, depth: int) -> None:
    log = _log(make_logger)
    log.logger.error("failed", exc_info=_chain(depth))
    assert CANARY not in log.text
    assert f"ValueError: innermost holds {MASK}" in log.text
    assert log.text.count("The above exception was the direct cause") == depth


def test_a_secret_deep_in_a_chain_of_contexts_is_masked(make_logger: object) -> None:
    log = _log(make_logger)
    try:
        try:
            raise KeyError(CANARY)
        except KeyError:
            error: BaseException | None = None
            for level in range(12):
                try:
                    raise RuntimeError(f"while handling, level {level}")
                except RuntimeError as exc:
                    if error is not None:
                        exc.__context__ = error
                    error = exc
            assert error is not None
            raise error
    except RuntimeError:
        log.logger.exception("failed")
    assert CANARY not in log.text
    assert f"KeyError: '{MASK}'" in log.text


def test_a_cycle_in_the_chain_ends_and_is_masked(make_logger: object) -> None:
    log = _log(make_logger)
    first = RuntimeError("first")
    second = ValueError(f"second holds {CANARY}")
    first.__context__ = second
    second.__context__ = first  # a cycle the interpreter would have broken
    log.logger.error("failed", exc_info=first)
    assert CANARY not in log.text
    assert f"ValueError: second holds {MASK}" in log.text


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in 3.11")
def test_a_group_at_the_end_of_a_long_chain_is_masked(make_logger: object) -> None:
    log = _log(make_logger)
    group = ExceptionGroup("several", [ValueError("fine"), KeyError(CANARY)])  # noqa: F821
    error: BaseException = group
    for level in range(11):
        outer = RuntimeError(f"level {level}")
        outer.__cause__ = error
        error = outer
    log.logger.error("failed", exc_info=error)
    assert CANARY not in log.text
    assert f"KeyError: '{MASK}'" in log.text
    assert "ExceptionGroup: several (2 sub-exceptions)" in log.text


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is new in 3.11")
def test_nested_groups_are_masked_at_every_level_and_keep_their_names(make_logger: object) -> None:
    class Failures(ExceptionGroup):  # noqa: F821
        pass

    log = _log(make_logger)
    inner: BaseException = ValueError(f"leaf holds {CANARY}")
    for level in range(9):  # within what traceback prints (max_group_depth 10)
        inner = Failures(f"level {level}", [inner, ValueError("fine")])
    inner.__cause__ = _chain(11)
    log.logger.error("failed", exc_info=inner)
    assert CANARY not in log.text
    assert f"ValueError: leaf holds {MASK}" in log.text
    assert f"ValueError: innermost holds {MASK}" in log.text
    assert "Failures: level 8 (2 sub-exceptions)" in log.text


def test_notes_are_masked(make_logger: object) -> None:
    log = _log(make_logger)
    error = ValueError("bad")
    error.__notes__ = [f"while reading {CANARY}"]
    log.logger.error("failed", exc_info=_wrap(error, depth=11))
    assert CANARY not in log.text
    assert f"while reading {MASK}" in log.text


def _wrap(error: BaseException, depth: int) -> BaseException:
    for level in range(depth):
        outer = RuntimeError(f"level {level}")
        outer.__cause__ = error
        error = outer
    return error


# -- item 7: what traceback prints besides str(exc) ------------------------------------------


def test_a_syntax_errors_source_line_is_masked(make_logger: object) -> None:
    log = _log(make_logger)
    try:
        compile(f"password = {CANARY} +\n", "settings.py", "exec")
    except SyntaxError:
        log.logger.exception("bad settings")
    assert CANARY not in log.text
    assert f"password = {MASK} +" in log.text
    assert 'File "settings.py", line 1' in log.text
    assert "SyntaxError: " in log.text


def test_a_syntax_errors_file_name_and_message_are_masked(make_logger: object) -> None:
    log = _log(make_logger)
    error = SyntaxError(f"unexpected {CANARY}", (f"/srv/{CANARY}/app.py", 3, 1, "x = 1\n", 3, 2))
    log.logger.error("failed", exc_info=_wrap(error, depth=1))
    assert CANARY not in log.text
    assert f'File "/srv/{MASK}/app.py", line 3' in log.text
    assert f"SyntaxError: unexpected {MASK}" in log.text
    assert "x = 1" in log.text


def test_an_indentation_error_keeps_its_name(make_logger: object) -> None:
    log = _log(make_logger)
    try:
        compile(f"if x:\ny = '{CANARY}'\n", "conf.py", "exec")
    except IndentationError:
        log.logger.exception("bad settings")
    assert CANARY not in log.text
    assert f"y = '{MASK}'" in log.text
    assert "IndentationError: expected an indented block" in log.text


def test_os_error_file_names_are_masked(make_logger: object) -> None:
    log = _log(make_logger)
    try:
        open(f"/nonexistent/{CANARY}/file")  # noqa: SIM115
    except OSError:
        log.logger.exception("cannot open")
    try:
        raise OSError(2, "No such file", f"/a/{CANARY}", None, f"/b/{CANARY}")
    except OSError:
        log.logger.exception("cannot rename")
    assert CANARY not in log.text
    assert f"'/nonexistent/{MASK}/file'" in log.text
    assert f"'/a/{MASK}' -> '/b/{MASK}'" in log.text


def test_a_key_error_shown_through_repr_is_masked(make_logger: object) -> None:
    log = _log(make_logger)
    try:
        {}[CANARY]
    except KeyError:
        log.logger.exception("missing")
    assert CANARY not in log.text
    assert f"KeyError: '{MASK}'" in log.text


def test_an_exception_logged_as_the_message_is_masked(make_logger: object) -> None:
    log = _log(make_logger)
    log.logger.error(ValueError(f"bad {CANARY}"))
    log.logger.error("%s", KeyError(CANARY))
    assert CANARY not in log.text
    assert f"bad {MASK}" in log.text
    assert f"'{MASK}'" in log.text


# -- item 7: a malformed log call --------------------------------------------------------------


def test_a_malformed_call_is_reported_like_logging_does_and_masked(
    make_logger: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", True)
    log = _log(make_logger)
    log.logger.info(f"%s and %s from {CANARY}", CANARY)  # one argument short: must not raise
    log.logger.info("%(a)s", {"b": CANARY})  # a missing key
    log.logger.info("still logging")
    errors = capsys.readouterr().err
    assert errors.count("--- Logging error ---") == 2
    assert CANARY not in errors
    assert CANARY not in log.text
    assert f"Message: '%s and %s from {MASK}'" in errors
    assert f"Arguments: ('{MASK}',)" in errors
    assert f"'b': '{MASK}'" in errors
    assert log.text.endswith("INFO " + log.logger.name + " still logging\n")


def test_a_malformed_call_with_a_short_value_masks_the_whole_argument(
    make_logger: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", True)
    log = _log(make_logger, {"PIN": "4711"})
    pin = "47" + "11"  # not spelled out: the report also prints this source line
    log.logger.info("pin %s %s", pin)
    errors = capsys.readouterr().err
    assert "--- Logging error ---" in errors
    assert "4711" not in errors
    assert "Arguments: ('[masked:PIN]',)" in errors


def test_an_argument_whose_str_fails_does_not_break_the_filter(
    make_logger: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError(f"cannot show {CANARY}")

        def __repr__(self) -> str:
            raise RuntimeError(f"cannot show {CANARY}")

    monkeypatch.setattr(logging, "raiseExceptions", True)
    log = _log(make_logger)
    log.logger.info("value %s", Broken())
    log.logger.info("after")
    errors = capsys.readouterr().err
    assert CANARY not in errors + log.text
    assert log.text.endswith("after\n")


# -- the filter never raises and never lets an unmasked record through -------------------------


class ExplodingMapping(Mapping[str, str]):
    """An extra field that fails while the filter walks it."""

    def __getitem__(self, key: str) -> str:
        raise RuntimeError(f"exploded near {CANARY}")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError(f"exploded near {CANARY}")

    def __len__(self) -> int:
        return 1

    def __str__(self) -> str:
        return f"holds {CANARY}"


def test_a_failure_inside_the_filter_replaces_the_record_with_a_fixed_text(make_logger: object) -> None:
    log = _log(make_logger, fmt="%(message)s | %(field)s")
    log.logger.info("message holds %s", CANARY, extra={"field": ExplodingMapping()})
    log.logger.info("after", extra={"field": "fine"})
    assert CANARY not in log.text
    lines = log.text.splitlines()
    assert lines[0].startswith("[masked: this log record could not be masked]")
    assert lines[1] == "after | fine"


def test_a_keyring_that_fails_to_read_does_not_break_logging(make_logger: object) -> None:
    class FailingSecrets(Mapping[str, str]):
        def __getitem__(self, key: str) -> str:
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("keyring unavailable")

        def __len__(self) -> int:
            return 1

    log = _log(make_logger, FailingSecrets())
    log.logger.info("message holds %s", CANARY)
    assert CANARY not in log.text
    assert "[masked: this log record could not be masked]" in log.text


# -- where else a record carries text -----------------------------------------------------------


def test_preformatted_exception_text_and_stack_info_are_masked(make_logger: object) -> None:
    log = _log(make_logger)
    record = log.logger.makeRecord(log.logger.name, logging.ERROR, __file__, 1, "failed", None, None)
    record.exc_text = f"Traceback (most recent call last):\nValueError: {CANARY}"
    record.stack_info = f"Stack (most recent call last):\n  frame with {CANARY}"
    log.logger.handle(record)
    assert CANARY not in log.text
    assert f"ValueError: {MASK}" in log.text
    assert f"frame with {MASK}" in log.text


def test_exception_text_cached_by_an_unfiltered_handler_is_formatted_again(make_logger: object) -> None:
    log = _log(make_logger)
    unfiltered = io.StringIO()
    first = logging.StreamHandler(unfiltered)
    first.setFormatter(logging.Formatter(FORMAT))
    log.logger.handlers.insert(0, first)
    try:
        raise ValueError(f"bad {CANARY}")
    except ValueError:
        log.logger.exception("failed")
    assert CANARY in unfiltered.getvalue()  # the first handler has no filter: it caches exc_text
    assert CANARY not in log.text
    assert f"ValueError: bad {MASK}" in log.text


def test_stack_info_and_extra_fields_are_masked(make_logger: object) -> None:
    log = _log(make_logger, fmt="%(message)s | %(field)s | %(nested)s")

    def deeper(secret: str) -> None:
        log.logger.info("here", stack_info=True, extra={"field": secret, "nested": {"k": [secret]}})

    deeper(CANARY)
    assert CANARY not in log.text
    assert f"here | {MASK} | {{'k': ['{MASK}']}}" in log.text


# -- masking order and overlapping values -------------------------------------------------------


def test_overlapping_values_leave_no_part_of_either(make_logger: object) -> None:
    log = _log(make_logger, {"A": "abcdefgh12", "B": "gh12345678"})
    log.logger.info("joined: xx%syy", "abcdefgh12345678")
    assert "abcdef" not in log.text
    assert "345678" not in log.text
    assert "joined: xx[masked:A,B]yy" in log.text


def test_a_value_inside_another_is_masked_as_the_longer_one(make_logger: object) -> None:
    log = _log(make_logger, {"OUTER": "prefix-inner-secret-suffix", "INNER": "inner-secret"})
    log.logger.info("%s and %s", "prefix-inner-secret-suffix", "inner-secret")
    assert "inner-secret" not in log.text
    assert "[masked:OUTER] and [masked:INNER]" in log.text


def test_a_mask_never_creates_a_new_match(make_logger: object) -> None:
    # Masking works on the original text in one pass: once a value is replaced, another value
    # that spells part of the mask ("[masked:A") does not rewrite the mask itself.
    log = _log(make_logger, {"A": "a-long-secret-value", "B": "[masked:A"})
    log.logger.info("x %s y", "a-long-secret-value")
    assert "x [masked:A] y" in log.text


def test_the_same_value_under_two_names_names_both(make_logger: object) -> None:
    log = _log(make_logger, {"DB_PASSWORD": "same-value-here", "ALSO": "same-value-here"})
    log.logger.info("value same-value-here")
    assert "value [masked:ALSO,DB_PASSWORD]" in log.text


# -- item 12: very short and blank values ---------------------------------------------------------


def test_the_minimum_length_is_eight() -> None:
    assert MIN_SUBSTRING_LENGTH == 8


def test_a_short_value_does_not_erase_words_from_log_lines(make_logger: object) -> None:
    log = _log(make_logger, {"LEVEL_WORD": "ERROR", "SEVEN": "success"})
    log.logger.error("ERROR while connecting: success was not reached")
    assert "ERROR test_logfilter" in log.text
    assert "ERROR while connecting: success was not reached" in log.text
    assert "masked" not in log.text


def test_a_short_value_is_masked_when_it_is_a_whole_argument_or_field(make_logger: object) -> None:
    log = _log(make_logger, {"PIN": "4711"}, fmt="%(message)s | %(pin)s | %(nested)s")
    log.logger.info("pin is %s, not 47110", "4711", extra={"pin": "4711", "nested": {"pin": "4711"}})
    log.logger.info("4711", extra={"pin": "x", "nested": ["4711", "14711"]})
    assert log.text.splitlines() == [
        "pin is [masked:PIN], not 47110 | [masked:PIN] | {'pin': '[masked:PIN]'}",
        "[masked:PIN] | x | ['[masked:PIN]', '14711']",
    ]


def test_a_short_value_is_masked_when_it_is_an_exception_argument(make_logger: object) -> None:
    log = _log(make_logger, {"PIN": "4711"})
    pins = {"other": "0000"}
    wanted = "47" + "11"  # not spelled out: traceback also prints this source line
    try:
        pins[wanted]
    except KeyError:
        log.logger.exception("lookup")
    assert "4711" not in log.text
    assert "KeyError: '[masked:PIN]'" in log.text


@pytest.mark.parametrize("length", [MIN_SUBSTRING_LENGTH - 1, MIN_SUBSTRING_LENGTH])
def test_the_boundary_between_whole_field_and_substring_masking(make_logger: object, length: int) -> None:
    value = "k" * length
    log = _log(make_logger, {"KEY": value})
    log.logger.info(f"inside:{value}:text")
    if length >= MIN_SUBSTRING_LENGTH:
        assert log.text.strip().endswith("inside:[masked:KEY]:text")
    else:
        assert log.text.strip().endswith(f"inside:{value}:text")


@pytest.mark.parametrize("blank", [" ", "        ", "\t\n", "\n" * 10])
def test_whitespace_only_values_are_never_masked(make_logger: object, blank: str) -> None:
    log = _log(make_logger, {"BLANK": blank}, fmt="%(message)s|%(field)s")
    log.logger.info("a line%swith spaces", blank, extra={"field": blank})
    assert "masked" not in log.text
    assert f"a line{blank}with spaces|{blank}" in log.text


# -- bounds, shapes and what stays as it was ------------------------------------------------------


def test_past_the_bound_the_chain_is_cut_off_not_passed_through(
    make_logger: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secretboot import _logfilter

    monkeypatch.setattr(_logfilter, "_MAX_EXCEPTIONS", 5)
    log = _log(make_logger)
    error = RuntimeError("clean end")  # the tail holds nothing, but past the bound it is not read
    error.__cause__ = ValueError(f"holds {CANARY}")
    log.logger.error("failed", exc_info=_wrap(error, depth=10))
    assert CANARY not in log.text
    assert "clean end" not in log.text
    assert "[masked: exceptions past the first 5 not shown]" in log.text
    assert "RuntimeError: level 9" in log.text


@pytest.mark.skipif(sys.version_info < (3, 11), reason="BaseExceptionGroup is new in 3.11")
def test_a_base_exception_group_and_a_member_seen_twice(make_logger: object) -> None:
    log = _log(make_logger)
    member = KeyError(CANARY)
    group = BaseExceptionGroup("stop", [KeyboardInterrupt(f"by {CANARY}"), member, member])  # noqa: F821
    log.logger.error("failed", exc_info=group)
    assert CANARY not in log.text
    assert f"KeyboardInterrupt: by {MASK}" in log.text
    assert log.text.count(f"KeyError: '{MASK}'") == 2
    assert "BaseExceptionGroup: stop (3 sub-exceptions)" in log.text


def test_an_exception_without_secrets_is_passed_on_as_it_is(make_logger: object) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    log = _log(make_logger)
    keep = Keep()
    keep.addFilter(SecretFilter({"TOKEN": CANARY}))
    log.logger.addHandler(keep)
    error = _wrap(ValueError("clean"), depth=20)
    log.logger.error("failed", exc_info=error)
    assert seen[0].exc_info is not None
    assert seen[0].exc_info[1] is error
    try:
        raise _wrap(ValueError(f"dirty {CANARY}"), depth=2)
    except RuntimeError as dirty:
        log.logger.exception("failed")
        assert seen[1].exc_info is not None
        standin = seen[1].exc_info[1]
        assert standin is not dirty
        assert type(standin).__name__ == "RuntimeError"
        assert seen[1].exc_info[0] is type(standin)
        assert standin is not None
        assert standin.__traceback__ is dirty.__traceback__


def test_containers_keep_their_type_and_clean_objects_stay_untouched(make_logger: object) -> None:
    from collections import namedtuple

    Point = namedtuple("Point", "x y")
    clean = Point(1, 2)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    log = _log(make_logger, fmt="%(message)s | %(point)s | %(clean)s")
    keep = Keep()
    keep.addFilter(SecretFilter({"TOKEN": CANARY}))
    log.logger.addHandler(keep)
    log.logger.info("shapes", extra={"point": Point(CANARY, 2), "clean": clean})
    assert CANARY not in log.text
    assert f"shapes | Point(x='{MASK}', y=2) | Point(x=1, y=2)" in log.text
    assert seen[0].__dict__["clean"] is clean


def test_an_object_whose_repr_alone_holds_a_secret_is_replaced(make_logger: object) -> None:
    class Sneaky:
        def __str__(self) -> str:
            return "sneaky"

        def __repr__(self) -> str:
            return f"Sneaky({CANARY})"

    log = _log(make_logger, fmt="%(message)s | %(obj)s | %(items)s")
    log.logger.info("objects", extra={"obj": Sneaky(), "items": [Sneaky()]})
    assert CANARY not in log.text
    assert "objects | sneaky | ['sneaky']" in log.text


def test_a_dict_message_is_masked_inside(make_logger: object) -> None:
    log = _log(make_logger, {"TOKEN": CANARY, "PIN": "4711"})
    log.logger.info({"token": f"Bearer {CANARY}", "pin": "4711", "count": 4711})
    assert CANARY not in log.text
    assert f"{{'token': 'Bearer {MASK}', 'pin': '[masked:PIN]', 'count': 4711}}" in log.text


def test_the_default_reads_the_booted_keyring_at_each_record(
    make_logger: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secretboot import _bootstrap
    from secretboot._keyring import Keyring
    from secretboot._reference import parse_reference

    reference = parse_reference("ssm:/app/token")
    assert reference is not None
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(SecretFilter())
    logger = logging.getLogger("test_logfilter.keyring")
    logger.handlers = [handler]
    logger.propagate = False
    try:
        logger.warning("before %s", CANARY)  # nothing booted: nothing to mask
        monkeypatch.setattr(_bootstrap._state, "keyring", Keyring({"TOKEN": CANARY}, {"TOKEN": reference}))
        logger.warning("after %s", CANARY)
    finally:
        logger.handlers = []
    assert stream.getvalue().splitlines() == [f"before {CANARY}", f"after {MASK}"]


def test_an_exception_with_a_failing_property_is_still_masked(make_logger: object) -> None:
    class Response(Exception):
        @property
        def text(self) -> str:
            raise RuntimeError("body already consumed")

    log = _log(make_logger)
    log.logger.error("failed", exc_info=_wrap(Response(f"status 401 for {CANARY}"), depth=1))
    assert CANARY not in log.text
    assert f"Response: status 401 for {MASK}" in log.text
