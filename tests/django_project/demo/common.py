"""The settings every variant shares: nothing secret here."""

DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = ["secretboot.contrib.django"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
ROOT_URLCONF = "demo.urls"
# Sessions live in a cookie signed with SECRET_KEY: the key is what is under test.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
USE_TZ = True
