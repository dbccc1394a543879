"""SnapStart: keep plaintext out of the snapshot, resolve again after restore.

Lambda SnapStart snapshots the initialised process, so whatever ``bootstrap()``
resolved during INIT would be stored in the snapshot and shared by every
restored copy. With ``SECRETBOOT_SNAPSTART=drop`` (the default) the keyring's
plaintext (and anything ``export`` wrote) is dropped just before the snapshot and
resolved again just after each restore, within Lambda's 10-second restore budget.
``keep`` leaves it in the snapshot. Copies the application made itself
(``password = secrets["DB_PASSWORD"]`` at module level) are not ours to drop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from secretboot._errors import ConfigurationError, SecretbootError

SNAPSTART = "SECRETBOOT_SNAPSTART"
POLICIES = ("drop", "keep")
# Runtime start plus after-restore hooks must finish within 10 s. The resolution's
# own deadline (SECRETBOOT_TIMEOUT, 5 s by default) normally ends it first, with
# an error naming the variables; this is the backstop.
RESTORE_TIMEOUT = 8.0

_registered = False
_lock = threading.Lock()


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
    from secretboot._bootstrap import _restore_environ, _state

    _credentials.forget()  # temporary credentials fetched at INIT stay out of the snapshot too

    with _state.lock:
        if _state.keyring is not None:
            _state.keyring._drop_values()
        _restore_environ()


def after_restore(timeout: float = RESTORE_TIMEOUT) -> None:
    """Resolve again with the last boot's options; fail the restore if it cannot in time."""
    from secretboot import _credentials, _retry
    from secretboot._bootstrap import _state, bootstrap

    # Rate limits learnt before the snapshot belong to another process's moment, and
    # temporary credentials fetched then may have expired since: fetch them again.
    _retry.forget_limiters()
    _credentials.forget()
    failure: list[BaseException] = []

    # The options travel as the thread's arguments, not as locals of this frame, and the
    # error comes back without the thread's frames: error reporters send the locals of every
    # frame in a traceback, and ``environ`` may hold references and ciphertext.
    def boot(
        environ: Mapping[str, str] | None, env_file: str | os.PathLike[str] | None, export: bool | None
    ) -> None:
        try:
            bootstrap(refresh=True, environ=environ, env_file=env_file, export=export)
        except BaseException as exc:  # reported from the hook's own thread below
            failure.append(exc.with_traceback(None))

    worker = threading.Thread(target=boot, args=_state.options, name="secretboot-restore", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise SecretbootError(f"resolving secrets after restore took longer than {timeout:g} s")
    if failure:
        raise failure[0]
