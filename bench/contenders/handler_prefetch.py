"""The realistic handler (handler_nosecrets.py) with ``secretboot.prefetch()`` at the top of the
module and ``secretboot.bootstrap()`` at its end: the secrets' round trips overlap the
application's imports, and the join fails INIT on a bad secret as bootstrap() alone would.

Expects what the runner gives every contender: ``AWS_ENDPOINT_URL``, region and credentials,
and the references in the environment (``SECRETBOOT_TRANSPORT=boto3`` optional); prints the
checksum line (bench/contenders/_common.py) as secretboot_app.py does.
"""

import secretboot

secretboot.prefetch()

from _common import report  # noqa: E402
from handler_nosecrets import handler  # noqa: E402, F401 - the application, imported meanwhile

keyring = secretboot.bootstrap()
report(dict(keyring.items()))
