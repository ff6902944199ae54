"""The REST API under /api/v1/: each app's `api.py` views, wired here."""

urlpatterns: list = []
