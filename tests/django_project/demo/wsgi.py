"""The WSGI entry point gunicorn serves (``demo.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings_postgres")
application = get_wsgi_application()
