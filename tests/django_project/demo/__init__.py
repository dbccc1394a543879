"""A small Django project whose settings load secrets with secretboot (see tests/test_django.py)."""
