"""``ENGINE: "secretboot.contrib.django.postgresql"``: Django's PostgreSQL backend, rotation included.

See ``secretboot.contrib.django.db.RotatingPassword`` and docs/django.md.
"""
