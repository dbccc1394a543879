"""Views for the rotation tests: one that needs the database, one that does not."""

import os
import time

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse


def health(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"worker": os.getpid()})


def db(request: HttpRequest) -> HttpResponse:
    """Who the database says we are, on which server process; ``?hold=S`` keeps the worker busy."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, pg_backend_pid()")
        user, backend = cursor.fetchone()
    time.sleep(float(request.GET.get("hold", "0")))
    return JsonResponse({"worker": os.getpid(), "user": user, "backend": backend})
