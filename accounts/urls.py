from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("organizations/switch/", views.organization_switch, name="organization_switch"),
    path("organizations/new/", views.organization_create, name="organization_create"),
    path("organization/", views.organization_settings, name="organization_settings"),
    path("organization/rename/", views.organization_rename, name="organization_rename"),
    path("organization/invitations/", views.invitation_create, name="invitation_create"),
    path("organization/invitations/<uuid:invitation_id>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("organization/members/<uuid:membership_id>/role/", views.member_change_role, name="member_change_role"),
    path("organization/members/<uuid:membership_id>/remove/", views.member_remove, name="member_remove"),
    path("organization/audit/", views.organization_audit, name="organization_audit"),
    path("organization/audit/export.csv", views.organization_audit_csv, name="organization_audit_export"),
    path("organization/api-keys/", views.api_keys, name="api_keys"),
    path("organization/api-keys/<uuid:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("invitations/<uuid:organization_id>/<str:token>/", views.invitation_accept, name="invitation_accept"),
]
