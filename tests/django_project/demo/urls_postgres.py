from django.urls import path

from demo import db_views

urlpatterns = [
    path("health/", db_views.health),
    path("db/", db_views.db),
]
