from django.urls import path

from . import views

app_name = "lab"
urlpatterns = [
    path("", views.index, name="index"),
    path("run", views.start, name="start"),
    path("sessions/<str:session_id>.json", views.session_state, name="session"),
    path("sessions/<str:session_id>/cases/<int:case_pk>.html", views.session_case, name="case"),
]
