"""Drive the demo project in this process with Django's test client; print the results as JSON.

Run from this folder with the tokens to try as JSON on stdin: ``{"old": ..., "forged": ...,
"forged_session": ...}`` (made by the test with the old key and with the ciphertext as the
key). Django's settings are configured once per process, which is why this runs apart from pytest.
"""

import json
import os
import sys


def main() -> None:
    tokens = json.load(sys.stdin)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    client = Client()
    results: dict[str, object] = {"signed": client.get("/sign/", {"value": "hello"}).json()["token"]}
    for name in ("old", "forged"):
        answer = client.get("/verify/", {"token": tokens[name]})
        results[name] = [answer.status_code, answer.content.decode()]

    client.post("/session/", {"value": "round trip"})
    results["session"] = client.get("/session/").json()["value"]
    results["cookie"] = client.cookies[settings.SESSION_COOKIE_NAME].value

    stranger = Client()  # presents a session cookie signed with the ciphertext as the key
    stranger.cookies[settings.SESSION_COOKIE_NAME] = tokens["forged_session"]
    results["forged_session"] = stranger.get("/session/").json()["value"]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
