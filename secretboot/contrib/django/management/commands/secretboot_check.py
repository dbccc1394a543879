"""``manage.py secretboot_check``: ``secretboot check`` run inside the Django project.

Same options, same output on stdout, same exit status (through ``CommandError``).
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from secretboot import _cli


class Command(BaseCommand):
    help = "List every reference, its target and whether it resolves (as `secretboot check`)."
    # Its job is to diagnose unresolved references: the system check that reports
    # them (secretboot.E001) must not stop it from running.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--env-file", help="a .env file to read too (default: .env if present)")
        parser.add_argument("--no-env-file", action="store_true", help="read the process environment only")
        parser.add_argument("--offline", action="store_true", help="only parse; ask AWS nothing")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        argv = ["check"]
        if options["env_file"] is not None:
            argv.append(f"--env-file={options['env_file']}")
        argv += [
            f"--{flag.replace('_', '-')}" for flag in ("no_env_file", "offline", "json") if options[flag]
        ]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = _cli.main(argv)
        self.stdout.write(out.getvalue(), ending="")
        # The line saying which sources were read is news, not an error.
        lines = err.getvalue().splitlines()
        for line in lines:
            if line.startswith(_cli.CHECK_SOURCES):
                self.stderr.write(line)
        if code != _cli.OK:
            errors = "\n".join(line for line in lines if not line.startswith(_cli.CHECK_SOURCES))
            reason = errors.strip().removeprefix("secretboot: ")
            raise CommandError(reason or "some references do not resolve", returncode=code)
