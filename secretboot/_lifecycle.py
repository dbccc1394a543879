"""The process's secrets lifecycle: boot, refresh, drop and restore, in one place.

``_bootstrap`` is the public facade over this module; ``_refresh`` holds the timer, the
hooks and the pacing that this module drives; ``_snapstart`` is handed ``drop`` and
``restore`` at import and imports nothing above it.

Locks. ``_state.lock`` guards the state's fields and is held only to read them and to
swap a new resolution in (export, keyring, settings): never through network I/O, so a
reader (``getenv``) never waits for AWS. ``_state.boot_lock`` lets one resolution run at
a time (the first boot, ``bootstrap(refresh=True)``, a refresh by age, ``refresh_now``,
a SnapStart restore) and is held through I/O; readers never take it. A resolution reads
and resolves outside ``_state.lock`` and swaps under it; the keyring's contents change in
one assignment (``Keyring._replace``), so a reader sees the old values or the new.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from secretboot import _settings as s
from secretboot import _snapstart
from secretboot._environment import (
    _SKIPPED_PREFIXES,
    _read_env_file,
    near_misses,
    scan,
)
from secretboot._errors import (
    BootstrapError,
    ConfigurationError,
    Failure,
    SecretbootError,
    StaleError,
)
from secretboot._keyring import Keyring
from secretboot._reference import (
    Reference,
    is_reference,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at start-up
if TYPE_CHECKING:
    import logging
    from typing import TypeVar

    from secretboot._outcome import Outcome
    from secretboot._refresh import Hooks, Refresher

    T = TypeVar("T")

LOGGER_NAME = "secretboot"

# The clock of ages, pacing and stale bounds (a module attribute: tests replace it).
_clock: Callable[[], float] = time.monotonic


class Options:
    """What ``bootstrap()`` was asked, kept to resolve again (by age, after a SnapStart
    restore). ``environ`` is the caller's mapping and may hold references: never shown."""

    __slots__ = ("env_file", "environ", "export", "max_age")

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        export: bool | None = None,
        max_age: float | None = None,
    ) -> None:
        self.environ = environ
        self.env_file = env_file
        self.export = export
        self.max_age = max_age

    def __repr__(self) -> str:
        given = "a mapping" if self.environ is not None else "os.environ"
        return (
            f"<Options environ={given} env_file={self.env_file!r} export={self.export} "
            f"max_age={self.max_age}>"
        )


class _State:
    """What the process has booted. Fields guarded by ``lock`` (see the module's docstring)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.boot_lock = threading.RLock()
        self.keyring: Keyring | None = None
        self.environ: Mapping[str, str] = os.environ
        self.file_values: dict[str, str] = {}
        self.kms_vars: frozenset[str] = frozenset()
        # Variables written into os.environ by export: name -> (before, written).
        self.exported: dict[str, tuple[str | None, str]] = {}
        # The last successful boot's options, to boot again (by age, after a SnapStart restore).
        self.options = Options()
        # A prefetch() started and not joined yet (see _Prefetch).
        self.prefetch: _Prefetch | None = None
        # The max-age timer (None: max_age off) and the on_refresh callbacks (None: none yet).
        self.refresher: Refresher | None = None
        self.hooks: Hooks | None = None
        # name -> _clock() of the last resolution asked for it: refresh_now()'s pacing.
        self.attempted: dict[str, float] = {}
        self.min_interval = s.DEFAULT_REFRESH_MIN_INTERVAL
        # Bumped by reset() and the SnapStart drop: a refresh begun before is not applied.
        self.generation = 0


_state = _State()


# -- booting ----------------------------------------------------------------------------------


def boot(options: Options, refresh: bool) -> Keyring:
    """``bootstrap()``'s work: the keyring, resolved once (again with ``refresh``)."""
    keyring = _state.keyring
    if keyring is not None and not refresh:
        return keyring  # no lock: a booted process never waits here
    _guard_fork()
    with _state.boot_lock:
        keyring = _state.keyring
        if keyring is not None and not refresh:
            return keyring  # another thread booted while this one waited
        booted, changed = _start(refresh, options)
    assert booted is not None  # applied: no generation was given
    _fire(booted, changed)
    return booted


def prefetch(options: Options) -> None:
    """Start ``boot``'s resolution on a background thread (see ``secretboot.prefetch``)."""
    with _state.lock:
        if _state.keyring is not None or _state.prefetch is not None:
            return
        base = os.environ if options.environ is None else options.environ
        view = _unexported_view(base)
        # An env file's ${VAR} expands against os.environ, copied here: the thread does not read it.
        expand_env = dict(os.environ) if options.env_file is not None or view.get(s.ENV_FILE) else None
        job = _Prefetch(base, view, options, expand_env)
        _state.prefetch = job
        _guard_fork()
        _guard_snapshot(view)
        job.thread.start()


class _Prefetch:
    """One background resolution: ``_gather`` on its own thread, applied by whoever joins it.

    The thread never writes ``_state`` or ``os.environ`` and never takes a lock of ``_state``.
    """

    __slots__ = ("base", "done", "dropped", "error", "found", "options", "thread", "view")

    def __init__(
        self,
        base: Mapping[str, str],
        view: dict[str, str],
        options: Options,
        expand_env: Mapping[str, str] | None,
    ) -> None:
        self.base = base
        self.view = view
        self.options = options
        self.done = threading.Event()
        self.found: _Gathered | None = None
        self.error: BaseException | None = None
        self.dropped = False  # by reset(), a refresh, a fork or a snapshot: nobody will join it
        self.thread = threading.Thread(
            target=self._run, args=(expand_env,), name="secretboot-prefetch", daemon=True
        )

    def _run(self, expand_env: Mapping[str, str] | None) -> None:
        found: _Gathered | BaseException
        try:
            found = contained(
                _gather, self.base, self.view, self.options.env_file, self.options.export, expand_env
            )
        except BaseException as exc:  # a bug: kept (with its frames) for the join to raise
            found = exc
        del expand_env  # a copy of os.environ: not in the frame that logs (error reporters read it)
        try:
            if isinstance(found, _Gathered):
                self.found = found
                problem = ", ".join(f"{f.variable} ({f.reason})" for f in found.failures)
            else:
                self.error = found
                problem = _describe(found)
            if problem and not self.dropped:
                _logger().error(
                    "prefetch() could not resolve %s; the next bootstrap() or getenv() raises it",
                    problem,
                )
        finally:
            self.done.set()

    def mismatch(self, options: Options) -> list[str]:
        """The options given to ``bootstrap()`` that differ from this prefetch's (``max_age``
        changes no resolution: ``bootstrap()``'s is used)."""
        mine = self.options
        differ = []
        if (os.environ if options.environ is None else options.environ) is not self.base:
            differ.append("environ")
        if _path(options.env_file) != _path(mine.env_file):
            differ.append("env_file")
        if options.export != mine.export:
            differ.append("export")
        return differ

    def changed(self) -> list[str]:
        """Variables that changed since the prefetch read them in a way that changes the result.

        Plain values do not matter (they are read live); references, KMS variables,
        near misses and ``AWS_*``/``SECRETBOOT_*`` settings do.
        """
        file_values = self.found.file_values if self.found is not None else {}
        kms_vars = self.found.kms_vars if self.found is not None else frozenset()
        then = {**file_values, **self.view}
        now = {**file_values, **_unexported_view(self.base)}
        names = sorted(n for n in then.keys() | now.keys() if then.get(n) != now.get(n))
        if not names:
            return []
        from secretboot._nearmiss import near_miss

        def matters(value: str | None) -> bool:
            return value is not None and (is_reference(value) or near_miss(value) is not None)

        return [
            n
            for n in names
            if n.startswith(_SKIPPED_PREFIXES) or n in kms_vars or matters(then.get(n)) or matters(now.get(n))
        ]


def _path(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


def _describe(error: BaseException) -> str:
    """A failure in words that hold no value: variables and reasons, or the error's class."""
    if isinstance(error, BootstrapError):
        return ", ".join(f"{f.variable} ({f.reason})" for f in error.failures)
    if isinstance(error, SecretbootError):
        return str(error)  # ConfigurationError and the like name settings and paths, never values
    return f"(an unexpected {type(error).__name__})"


def _start(refresh: bool, options: Options) -> tuple[Keyring | None, frozenset[str] | None]:
    """Join a pending prefetch if there is one, else resolve. Called with ``boot_lock`` held."""
    with _state.lock:
        job = _state.prefetch
        if job is not None and refresh:
            _drop_prefetch()  # refresh asks for a resolution that starts now
            job = None
        if job is not None:
            differ = job.mismatch(options)
            if differ:
                raise ConfigurationError(
                    f"bootstrap() was given another {', '.join(differ)} than prefetch(); give both the "
                    "same options (environ: the same mapping), or call reset() first to drop the prefetch"
                )
            _state.prefetch = None
    if job is None:
        return _boot(options)
    waiting = time.perf_counter()
    job.done.wait()
    waited_ms = (time.perf_counter() - waiting) * 1000
    changed = job.changed()
    if changed:
        _logger().warning(
            "%s changed since prefetch(); resolving again (set them before prefetch())", ", ".join(changed)
        )
        return _boot(options)
    if job.error is not None:
        raise job.error
    assert job.found is not None
    joined = Options(job.options.environ, job.options.env_file, job.options.export, options.max_age)
    return _apply(job.found, joined, waited_ms)


def _drop_prefetch() -> None:
    """Forget the pending prefetch; its thread finishes on its own and its result is dropped."""
    job, _state.prefetch = _state.prefetch, None
    if job is not None:
        job.dropped = True


_guarded: set[str] = set()


def _guard_fork() -> None:
    """Once per process: a forked child gets fresh locks, never a pending prefetch (its thread
    is not forked), and its own refresh thread."""
    if "fork" not in _guarded and hasattr(os, "register_at_fork"):
        _guarded.add("fork")
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    # Only the forking thread exists in the child: a lock another thread held at the fork
    # stays held forever, so every lock is new. The prefetch thread is gone (the child
    # resolves for itself when it joins); the refresh thread starts again.
    _state.lock = threading.RLock()
    _state.boot_lock = threading.RLock()
    if _state.prefetch is not None:
        _state.prefetch.dropped = True
        _state.prefetch = None
    if _state.hooks is not None:
        _state.hooks.after_fork_in_child()
    if _state.refresher is not None:
        _state.refresher.after_fork_in_child()


def _guard_snapshot(view: Mapping[str, str]) -> None:
    """Once per process, on the caller's thread: a SnapStart snapshot never holds an
    unjoined prefetch's plaintext."""
    if "snapshot" in _guarded or view.get("AWS_LAMBDA_INITIALIZATION_TYPE") != "snap-start":
        return
    if view.get(_snapstart.SNAPSTART, "").strip().lower() == "keep":
        return  # the plaintext may be in the snapshot: the joined keyring's would be too
    try:
        from snapshot_restore_py import register_before_snapshot
    except ImportError:
        return
    _guarded.add("snapshot")
    register_before_snapshot(_prefetch_before_snapshot)


def _prefetch_before_snapshot(timeout: float = 8.0) -> None:
    """A prefetch never joined during INIT: wait for it, drop its result, say so."""
    with _state.lock:
        job = _state.prefetch
        if job is None:
            return
        _drop_prefetch()
    job.done.wait(timeout)
    job.found = None
    _logger().warning(
        "prefetch() was never joined before the SnapStart snapshot: its result was dropped, "
        "and the first bootstrap() or getenv() after restore resolves again"
    )


# -- reading ----------------------------------------------------------------------------------


def lookup(name: str) -> str | None:
    """``getenv()``'s work (its default applied by the caller)."""
    keyring = _state.keyring
    if keyring is None:
        job = _state.prefetch  # joined with its own options
        keyring = boot(job.options if job is not None else Options(), False)
    refresher = _state.refresher
    if refresher is not None and not keyring._stale and refresher.past_stale():
        # The refresh thread marks it at the deadline; a read that comes first (the thread
        # frozen with the process, say) does it itself.
        _mark_stale(refresher)
    # A resolved name needs no lock: a refresh swaps the keyring's contents in one
    # assignment, and readers must not queue behind each other (nor behind a swap).
    current = _state.keyring if _state.keyring is not None else keyring
    contents = current._contents
    if name in contents.values:
        return contents.values[name]
    del current, contents
    with _state.lock:
        if _state.keyring is not None:  # not ``or``: an empty keyring is falsy
            keyring = _state.keyring
        if name in keyring:
            return keyring[name]
        stale = keyring._stale and name in keyring.references
        value = _state.environ.get(name)
        if value is None:
            value = _state.file_values.get(name)
        kms_vars = _state.kms_vars
    del keyring
    if stale:
        raise StaleError(name)
    if value is not None and (
        name in kms_vars or (not name.startswith(_SKIPPED_PREFIXES) and is_reference(value))
    ):
        detail = "set after bootstrap(); call bootstrap(refresh=True)"
        raise BootstrapError([Failure(name, "reference", "-", "NotResolved", detail)])
    return value


def contained(work: Callable[..., T], *args: object) -> T | SecretbootError:
    """``work(*args)``, or the ``SecretbootError`` it raised, for the caller to raise itself.

    Error reporters (Sentry by default) send the locals of every frame in a traceback,
    and the frames that do the work hold plaintext, references and the keyring. The
    error comes back without those frames (its own and those of every error chained
    to it), so the public function raises it from a frame that holds none of that::

        result = contained(_work, name)
        if isinstance(result, SecretbootError):
            raise result
    """
    try:
        return work(*args)
    except SecretbootError as exc:
        error = exc
    pending: list[BaseException | None] = [error]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        if item is not None and id(item) not in seen:
            seen.add(id(item))
            item.__traceback__ = None
            pending += [item.__cause__, item.__context__]
    return error


def reset() -> None:
    """Forget the keyring (and a pending ``prefetch()``), stop refreshing, undo ``export``.

    ``on_refresh`` callbacks stay registered (unregister them with what ``on_refresh``
    returned). A refresh in flight finishes, and its result is dropped.
    """
    with _state.lock:
        _state.generation += 1
        _drop_prefetch()
        _restore_environ()
        _stop_refresher()
        _state.keyring = None
        _state.environ = os.environ
        _state.file_values = {}
        _state.kms_vars = frozenset()
        _state.attempted = {}
        _state.min_interval = s.DEFAULT_REFRESH_MIN_INTERVAL


# -- refreshing -------------------------------------------------------------------------------


def on_refresh(callback: Callable[[Keyring, frozenset[str]], object]) -> Callable[[], None]:
    """Register ``callback(keyring, changed_names)``; returns the function that unregisters it."""
    if not callable(callback):
        raise TypeError("on_refresh() takes a callable")
    from secretboot._refresh import Hooks

    with _state.lock:
        if _state.hooks is None:
            _state.hooks = Hooks()
        hooks = _state.hooks
    return hooks.add(callback)


def refresh_now(names: Iterable[str] | None) -> frozenset[str]:
    """``secretboot.refresh_now``'s work: resolve ``names`` (default: all) again, paced per name."""
    if isinstance(names, str):
        raise TypeError("refresh_now() takes an iterable of names, not one str")
    wanted = None if names is None else frozenset(names)
    from secretboot._refresh import due_names

    _guard_fork()
    with _state.boot_lock:
        keyring = _state.keyring
        if keyring is None:
            raise SecretbootError("refresh_now() was called before bootstrap(): nothing is booted")
        refs = keyring.references
        asked = frozenset(refs) if wanted is None else wanted & frozenset(refs)  # plain ones: nothing to do
        now = _clock()
        due, _ = due_names(asked, _state.attempted, now, _state.min_interval)
        if not due:
            return frozenset()
        if len(keyring) != len(refs):
            due = frozenset(refs)  # stale or dropped: no old value to keep, so everything
        for name in due:
            _state.attempted[name] = now
        generation = _state.generation
        found = _gather_names(keyring, due, _state.options)
        applied, changed = _apply(found, _state.options, generation=generation)
        if changed is not None and due >= frozenset(refs) and _state.refresher is not None:
            _state.refresher.succeeded()
    _fire(applied, changed)
    return changed or frozenset()


def _refresh_by_age(refresher: Refresher) -> frozenset[str] | BaseException:
    """The refresh thread's ``run``: everything again, as at start-up; the error returned."""
    return contained(_refresh_all, refresher)


def _refresh_all(refresher: Refresher) -> frozenset[str]:
    with _state.boot_lock:
        keyring = _state.keyring
        if _state.refresher is not refresher or keyring is None:
            return frozenset()  # reset, dropped for a snapshot, or replaced meanwhile
        now = _clock()
        for name in keyring.references:
            _state.attempted[name] = now
        del keyring  # its plaintext, not held in this frame through the network wait
        generation = _state.generation
        applied, changed = _boot(_state.options, quiet=True, generation=generation)
    _fire(applied, changed)
    return changed or frozenset()


def _mark_stale(refresher: Refresher) -> None:
    """Past max age + max stale with no success: stop serving (fail closed) until one."""
    with _state.lock:
        keyring = _state.keyring
        if _state.refresher is not refresher or keyring is None or keyring._stale:
            return
        keyring._drop_values(stale=True)
        _restore_environ()  # what export wrote goes too: os.environ holds the references again
        names = sorted(keyring.references)
    _logger().error(
        "%s no longer served: no refresh has succeeded for %s=%g s + %s=%g s; reads raise "
        "StaleError until one does",
        ", ".join(names) or "nothing",
        s.MAX_AGE,
        refresher.max_age,
        s.MAX_STALE,
        refresher.max_stale or 0.0,
    )


def _arm(max_age: float | None, max_stale: float | None) -> None:
    """Start, keep or stop the refresh timer after a full resolution. ``_state.lock`` held."""
    current = _state.refresher
    if max_age is None:
        _stop_refresher()
        return
    if (
        current is not None
        and not current.stopped
        and (current.max_age, current.max_stale)
        == (
            max_age,
            max_stale,
        )
    ):
        current.succeeded()
        return
    _stop_refresher()
    from secretboot._refresh import Refresher

    refresher = Refresher(
        _refresh_by_age,
        max_age=max_age,
        max_stale=max_stale,
        on_stale=_mark_stale,
        describe=_describe,
        logger=_logger(),
        clock=_clock,
    )
    _state.refresher = refresher
    refresher.start()


def _stop_refresher() -> None:
    refresher, _state.refresher = _state.refresher, None
    if refresher is not None:
        refresher.stop()


def _fire(keyring: Keyring | None, changed: frozenset[str] | None) -> None:
    """The on_refresh callbacks, after a refresh (``changed`` is None for a first boot, or a
    refresh that was not applied), on this thread, with no lock held."""
    hooks = _state.hooks
    if hooks is not None and keyring is not None and changed is not None and len(hooks):
        hooks.fire(keyring, changed, _logger())


# -- SnapStart ------------------------------------------------------------------------------


def _drop_for_snapshot() -> None:
    """Before a snapshot: no plaintext in the keyring or os.environ, no refresh to put it back."""
    with _state.lock:
        _state.generation += 1  # a refresh in flight is not applied
        _stop_refresher()
        if _state.keyring is not None:
            _state.keyring._drop_values()
        _restore_environ()


def _restore_after_snapshot() -> None:
    """After a restore: resolve again with the last boot's options (re-arming the timer); the
    on_refresh callbacks get every name. Raises what ``bootstrap()`` would."""
    result = contained(boot, _state.options, True)
    if isinstance(result, SecretbootError):
        raise result


_snapstart.connect(drop=_drop_for_snapshot, restore=_restore_after_snapshot)


# -- resolving --------------------------------------------------------------------------------


def _boot(
    options: Options, *, quiet: bool = False, generation: int | None = None
) -> tuple[Keyring | None, frozenset[str] | None]:
    base = os.environ if options.environ is None else options.environ
    found = _gather(base, _unexported_view(base), options.env_file, options.export, None, options.max_age)
    return _apply(found, options, quiet=quiet, generation=generation)


class _Gathered:
    """What a resolution found, before anything is applied. Holds plaintext: never logged."""

    __slots__ = (
        "base",
        "do_export",
        "elapsed_ms",
        "failures",
        "file_values",
        "kms_vars",
        "max_stale",
        "merged",
        "min_interval",
        "outcome",
        "partial",
        "refs",
        "resolved",
        "snapstart",
    )

    def __init__(self, **fields: object) -> None:
        self.partial = False
        for name, value in fields.items():
            setattr(self, name, value)
        if not hasattr(self, "resolved"):
            self.resolved = frozenset(self.refs)

    base: Mapping[str, str]
    do_export: bool
    elapsed_ms: float
    failures: list[Failure]
    file_values: dict[str, str]
    kms_vars: frozenset[str]
    max_stale: float | None
    merged: dict[str, str]
    min_interval: float
    outcome: Outcome
    partial: bool  # some names only (refresh_now): the others keep their values and settings
    refs: dict[str, Reference]
    resolved: frozenset[str]  # the names this resolution asked AWS for
    snapstart: str | None


def _gather(
    base: Mapping[str, str],
    view: dict[str, str],
    env_file: str | os.PathLike[str] | None,
    export: bool | None,
    expand_env: Mapping[str, str] | None = None,
    max_age: float | None = None,
) -> _Gathered:
    """Read, check and resolve; change nothing (safe on a background thread: no ``_state`` write).

    ``view`` is ``base`` as read (``_unexported_view``); ``expand_env`` what an env file's
    ``${VAR}`` expands against (``os.environ`` when ``None``).
    """
    started = time.perf_counter()
    path = env_file if env_file is not None else view.get(s.ENV_FILE) or None
    file_values = _read_env_file(path, expand_env) if path is not None else {}
    merged = {**file_values, **view}
    # Every setting is read, and may fail, before any request is made.
    kms_vars = s.kms_vars(merged)
    do_export = s.flag(merged, s.EXPORT, export)
    settings = s.Settings(merged)
    s.max_age(merged, max_age)
    snapstart = None
    if merged.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
        snapstart = _snapstart.policy(merged)

    refs, failures = scan(merged, kms_vars)
    misses = near_misses(merged, kms_vars, refs)
    if settings.strict:
        failures.extend(misses)
    elif misses:
        for miss in misses:
            _logger().warning(
                "%s %s; it is used as plain text (%s=true makes this fail start-up)",
                miss.variable,
                miss.detail,
                s.STRICT,
            )
    from secretboot._resolve import resolve
    from secretboot._transport import Deadline

    deadline = Deadline(settings.timeout)
    if failures:
        deadline.decide()  # this start fails closed already: requests are made once, never retried
    outcome = resolve(refs, settings, deadline=deadline)
    failures.extend(outcome.failures)
    return _Gathered(
        base=base,
        do_export=do_export,
        elapsed_ms=(time.perf_counter() - started) * 1000,
        failures=failures,
        file_values=file_values,
        kms_vars=kms_vars,
        max_stale=settings.max_stale,
        merged=merged,
        min_interval=settings.refresh_min_interval,
        outcome=outcome,
        refs=refs,
        snapstart=snapstart,
    )


def _gather_names(keyring: Keyring, names: frozenset[str], options: Options) -> _Gathered:
    """``_gather`` for some of the keyring's names (``refresh_now``): their references as
    resolved before, the settings of the environment booted; the others keep their values."""
    from secretboot._outcome import Outcome
    from secretboot._resolve import resolve
    from secretboot._transport import Deadline

    started = time.perf_counter()
    base = _state.environ
    file_values = _state.file_values
    merged = {**file_values, **_unexported_view(base)}
    do_export = s.flag(merged, s.EXPORT, options.export)
    settings = s.Settings(merged)
    contents = keyring._contents
    refs = dict(contents.references)
    found = resolve({n: refs[n] for n in names}, settings, deadline=Deadline(settings.timeout))
    outcome = Outcome()
    outcome.values = {n: v for n, v in contents.values.items() if n not in names}
    outcome.values.update(found.values)
    outcome.binary = {n: v for n, v in contents.binary.items() if n not in names}
    outcome.binary.update(found.binary)
    outcome.failures = found.failures
    outcome.calls = found.calls
    outcome.retries, outcome.waited, outcome.transport = found.retries, found.waited, found.transport
    return _Gathered(
        base=base,
        do_export=do_export,
        elapsed_ms=(time.perf_counter() - started) * 1000,
        failures=list(found.failures),
        file_values=file_values,
        kms_vars=_state.kms_vars,
        max_stale=settings.max_stale,
        merged=merged,
        min_interval=settings.refresh_min_interval,
        outcome=outcome,
        partial=True,
        refs=refs,
        resolved=names,
        snapstart=None,
    )


def _apply(
    found: _Gathered,
    options: Options,
    waited_ms: float | None = None,
    *,
    quiet: bool = False,
    generation: int | None = None,
) -> tuple[Keyring | None, frozenset[str] | None]:
    """Fail closed on any failure, else export and swap the keyring in, under ``_state.lock``.

    Returns the keyring and the names whose values changed (``None`` for a first boot, or
    when ``generation`` is given and ``reset()`` or a SnapStart drop came since: then nothing
    is applied). ``quiet``: no WARNING on failure (the refresh thread says it once per streak).
    """
    outcome, refs = found.outcome, found.refs
    max_age = None if found.partial else s.max_age(found.merged, options.max_age)
    exports = _exports(found.file_values, outcome.values, found.kms_vars) if found.do_export else {}
    failures = [*found.failures, *_unexportable(exports, refs)]
    calls = sum(outcome.calls.values())
    if failures:
        error = BootstrapError(failures)
        if not quiet:
            _logger().warning(
                "could not resolve %s after %s and %s%s in %.0f ms",
                ", ".join(error.variables),
                _many(calls, "API call", "API calls"),
                _many(outcome.retries, "retry", "retries"),
                _paused(outcome),
                found.elapsed_ms,
            )
        raise error from None
    with _state.lock:
        keyring = _state.keyring
        if generation is not None and (generation != _state.generation or keyring is None):
            return keyring, None  # reset or dropped since it began: not applied
        if found.do_export:
            refused = _export(exports, refs)
            if refused is not None:
                _logger().warning("could not export %s: os.environ refused it", ", ".join(refused.variables))
                raise refused
        before = None if keyring is None else keyring._values
        if keyring is None:
            keyring = Keyring(outcome.values, refs, outcome.binary)
        else:
            keyring._replace(outcome.values, refs, outcome.binary)
        _state.keyring = keyring
        now = _clock()
        for name in found.resolved:
            _state.attempted[name] = now
        _state.min_interval = found.min_interval
        if not found.partial:
            _state.options = options
            _state.environ = found.base
            _state.file_values = found.file_values
            _state.kms_vars = found.kms_vars
            _arm(max_age, found.max_stale)
        if found.snapstart is not None:
            _snapstart.register(found.snapstart)
    changed = None
    if before is not None:
        after = outcome.values
        changed = frozenset(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
    if "logging" not in sys.modules:
        # logging was never imported, so no handler exists to show the line:
        # skip the import on the cold-start path.
        return keyring, changed
    kinds = Counter(refs[name].kind for name in found.resolved)
    joined = "" if waited_ms is None else f" (prefetched; the join waited {waited_ms:.0f} ms)"
    what = "" if changed is None else f"; {_many(len(changed), 'value', 'values')} changed"
    _logger().info(
        "resolved %s (%s) with %s (%s) and %s%s%s in %.0f ms%s%s",
        _many(len(found.resolved), "secret", "secrets"),
        _counts(kinds),
        _many(calls, "API call", "API calls"),
        _counts(outcome.calls),
        _many(outcome.retries, "retry", "retries"),
        _paused(outcome),
        f" via {outcome.transport}" if outcome.transport else "",
        found.elapsed_ms,
        joined,
        what,
    )
    return keyring, changed


def _many(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _paused(outcome: Outcome) -> str:
    """How long retries held the start back: the longest one request spent paused."""
    if not outcome.waited:
        return ""
    return f" (one request paused {outcome.waited * 1000:.0f} ms at most)"


def read_environment(
    environ: Mapping[str, str] | None, env_file: str | os.PathLike[str] | None
) -> tuple[Mapping[str, str], dict[str, str], dict[str, str]]:
    """(the environment read, the env file's values, both merged with the environment winning)."""
    base = os.environ if environ is None else environ
    view = _unexported_view(base)
    path = env_file if env_file is not None else view.get(s.ENV_FILE) or None
    file_values = _read_env_file(path) if path is not None else {}
    return base, file_values, {**file_values, **view}


def _unexported_view(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` as it was before our own export, so a refresh sees references again."""
    view = dict(base)
    if base is os.environ:
        for name, (before, written) in _state.exported.items():
            if view.get(name) != written:
                continue  # changed since we wrote it: theirs now
            if before is None:
                del view[name]
            else:
                view[name] = before
    return view


def _exports(
    file_values: Mapping[str, str], resolved: Mapping[str, str], kms_vars: frozenset[str]
) -> dict[str, str]:
    """What export writes: every resolved value, and the file's values the environment lacks."""
    environment = _unexported_view(os.environ)
    exports = {k: v for k, v in file_values.items() if k not in environment}
    exports.update(resolved)
    # A child inherits SECRETBOOT_KMS_VARS too, and would take the plaintext now in those
    # variables for ciphertext and decrypt it again: it lists only what was not exported.
    if kms_vars & exports.keys():
        exports[s.KMS_VARS] = ",".join(sorted(kms_vars - exports.keys()))
    return exports


def _unexportable(exports: Mapping[str, str], refs: Mapping[str, Reference]) -> list[Failure]:
    """Names and values no environment variable can hold, checked before anything is written."""
    failures = []
    for name, value in exports.items():
        reason = _export_problem(name, value)
        if reason:
            failures.append(_export_failure(name, refs, reason))
    return failures


def _export_problem(name: str, value: str) -> str:
    if not name:
        return "has an empty name, which an environment variable cannot"
    if "=" in name or "\x00" in name:
        return "its name holds '=' or a NUL character, which an environment variable's cannot"
    if "\x00" in value:
        return "holds a NUL character, which an environment variable cannot"
    for text in (name, value):
        try:
            os.fsencode(text)
        except UnicodeError:
            # Not raised: the error holds the text.
            return "cannot be encoded for the environment"
    return ""


def _export_failure(name: str, refs: Mapping[str, Reference], reason: str) -> Failure:
    ref = refs.get(name)
    # What follows an '=' (or a NUL) in a name may be a value, from a line like 'A=secret'=1.
    head = name.split("=", 1)[0].split("\x00", 1)[0]
    shown = (head or "(empty name)") + ("..." if head != name else "")
    return Failure(shown, ref.kind if ref else "plain", ref.target if ref else "-", "NotExportable", reason)


def _export(exports: Mapping[str, str], refs: Mapping[str, Reference]) -> BootstrapError | None:
    """Write ``exports`` into ``os.environ``, all or nothing; restore what is exported no more.

    A refresh writes the new plaintext straight over the old: ``os.environ`` never holds
    a reference again in between, for another thread to read. If the OS refuses a write
    (everything was checked before), every write is undone and the error returned.
    """
    previous = _state.exported
    exported: dict[str, tuple[str | None, str]] = {}
    undo: list[tuple[str, str | None]] = []
    refused = ""
    for name, value in exports.items():
        current = os.environ.get(name)
        try:
            os.environ[name] = value
        except (ValueError, OSError):
            refused = name
            break
        undo.append((name, current))
        ours = name in previous and previous[name][1] == current
        exported[name] = (previous[name][0] if ours else current, value)
    if refused:
        # Built outside the except block: the caught error may hold the value.
        for name, current in reversed(undo):
            _put(name, current)
        return BootstrapError([_export_failure(refused, refs, "os.environ refused it")])
    for name, (before, written) in previous.items():
        if name not in exported and os.environ.get(name) == written:
            _put(name, before)
    _state.exported = exported
    return None


def _restore_environ() -> None:
    for name, (before, written) in _state.exported.items():
        if os.environ.get(name) == written:
            _put(name, before)
    _state.exported = {}


def _put(name: str, value: str | None) -> None:
    """Set or (for None) remove ``name`` in ``os.environ``."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def _logger() -> logging.Logger:
    import logging

    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        # A library's logger: silent unless the application configures logging
        # (else Python's last-resort handler prints warnings to stderr).
        logger.addHandler(logging.NullHandler())
    return logger
