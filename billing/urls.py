from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("", views.usage_page, name="usage"),
    path("export.csv", views.usage_csv, name="export"),
    path("members/<uuid:membership_id>/budget/", views.member_budget, name="member_budget"),
]
