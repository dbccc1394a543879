"""secretboot as an application uses it (run with and without SECRETBOOT_TRANSPORT=boto3)."""

from _common import report

import secretboot

keyring = secretboot.bootstrap()
report(dict(keyring.items()))
