"""Settings for code that insists on os.environ: bootstrap(export=True) puts the plaintext there."""

import os

import secretboot
from demo.common import *  # noqa: F403

secretboot.bootstrap(export=True)
SECRET_KEY = os.environ["SECRET_KEY"]
