"""Views that depend on SECRET_KEY: signed links (django.core.signing) and a signed-cookie session."""

from django.core import signing
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

SALT = "demo.links"


def sign(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"token": signing.dumps(request.GET["value"], salt=SALT)})


def verify(request: HttpRequest) -> HttpResponse:
    try:
        value = signing.loads(request.GET["token"], salt=SALT)
    except signing.BadSignature:
        return HttpResponseBadRequest("bad signature")
    return JsonResponse({"value": value})


def session(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        request.session["value"] = request.POST["value"]
    return JsonResponse({"value": request.session.get("value")})
