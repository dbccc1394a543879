"""The realistic handler (handler_nosecrets.py) with ``secretboot.bootstrap()`` at the top of
the module: the secrets' round trips are paid before the application's imports, in series.

Expects what the runner gives every contender: ``AWS_ENDPOINT_URL``, region and credentials,
and the references in the environment (``SECRETBOOT_TRANSPORT=boto3`` optional); prints the
checksum line (bench/contenders/_common.py) as secretboot_app.py does.
"""

from _common import report

import secretboot

keyring = secretboot.bootstrap()

from handler_nosecrets import handler  # noqa: E402, F401 - the application, imported after

report(dict(keyring.items()))
