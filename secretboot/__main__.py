"""``python -m secretboot``: the same command as the ``secretboot`` console script."""

from secretboot._cli import entry_point

entry_point()
