"""SnapStart: keep plaintext out of the snapshot, resolve again after restore.

Lambda SnapStart snapshots the initialised process, so whatever ``bootstrap()``
resolved during INIT would be stored in the snapshot and shared by every
restored copy. With ``SECRETBOOT_SNAPSTART=drop`` (the default) the keyring's
plaintext (and anything ``export`` wrote) is dropped just before the snapshot and
resolved again just after each restore, within Lambda's 10-second restore budget.
``keep`` leaves it in the snapshot. Copies the application made itself
(``password = secrets["DB_PASSWORD"]`` at module level) are not ours to drop.

This module imports nothing above it: ``_lifecycle`` hands it, once at import, the two
operations it triggers (``connect(drop=..., restore=...)``): dropping the plaintext, and
resolving again with the last boot's options (which also calls the ``on_refresh`` hooks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from secretboot._errors import ConfigurationError, SecretbootError

SNAPSTART = "SECRETBOOT_SNAPSTART"
POLICIES = ("drop", "keep")
# Runtime start plus after-restore hooks must finish within 10 s. The resolution's
# own deadline (SECRETBOOT_TIMEOUT, 5 s by default) normally ends it first, with
# an error naming the variables; this is the backstop.
RESTORE_TIMEOUT = 8.0

_registered = False
_lock = threading.Lock()
# The lifecycle's operations (see connect()); None until it is imported.
_drop: Callable[[], None] | None = None
_restore: Callable[[], None] | None = None


def connect(*, drop: Callable[[], None], restore: Callable[[], None]) -> None:
    """Hand this module what its hooks do: ``drop`` the plaintext (before a snapshot) and
    ``restore`` it (resolve again after a restore, raising what ``bootstrap()`` would)."""
    global _drop, _restore
    _drop, _restore = drop, restore


def policy(env: Mapping[str, str]) -> str:
    value = env.get(SNAPSTART, "").strip().lower() or "drop"
    if value not in POLICIES:
        raise ConfigurationError(f"{SNAPSTART} must be one of {', '.join(POLICIES)}")
    return value


def register(chosen: str) -> None:
    """Register the hooks once, if the policy drops plaintext and the hooks module exists."""
    global _registered
    if chosen == "keep":
        return
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        return
    with _lock:
        if _registered:
            return
        register_before_snapshot(before_snapshot)
        register_after_restore(after_restore)
        _registered = True


def before_snapshot() -> None:
    from secretboot import _credentials

    _credentials.forget()  # temporary credentials fetched at INIT stay out of the snapshot too
    if _drop is not None:
        _drop()  # the keyring's plaintext, what export wrote, and the refresh timer


def after_restore(timeout: float = RESTORE_TIMEOUT) -> None:
    """Resolve again with the last boot's options; fail the restore if it cannot in time."""
    from secretboot import _credentials, _retry

    # Rate limits learnt before the snapshot belong to another process's moment, and
    # temporary credentials fetched then may have expired since: fetch them again.
    _retry.forget_limiters()
    _credentials.forget()
    restore = _restore
    if restore is None:
        return  # the lifecycle was never imported: nothing was booted
    failure: list[BaseException] = []

    # The options stay with the lifecycle, never in this frame, and the error comes back
    # without the thread's frames: error reporters send the locals of every frame in a
    # traceback, and ``environ`` may hold references and ciphertext.
    def boot() -> None:
        try:
            restore()
        except BaseException as exc:  # reported from the hook's own thread below
            failure.append(exc.with_traceback(None))

    worker = threading.Thread(target=boot, name="secretboot-restore", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise SecretbootError(f"resolving secrets after restore took longer than {timeout:g} s")
    if failure:
        raise failure[0]
