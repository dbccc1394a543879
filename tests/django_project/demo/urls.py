from django.urls import path

from demo import views

urlpatterns = [
    path("sign/", views.sign),
    path("verify/", views.verify),
    path("session/", views.session),
]
