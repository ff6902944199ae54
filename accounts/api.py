"""REST API of accounts: the organization, its members and invitations, and the caller's API keys.

Also the small helpers every app's API views use to get the acting member from a DRF request
(`request.membership` is set by accounts.middleware for sessions and by ApiKeyAuthentication for keys).
"""

from __future__ import annotations

import uuid

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.errors import PermissionDenied, Unauthenticated
from accounts.models import ApiKey, Membership
from accounts.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    InvitationCreateSerializer,
    InvitationSerializer,
    MemberSerializer,
    MemberUpdateSerializer,
    OrganizationSerializer,
    OrganizationUpdateSerializer,
    error_responses,
)


def membership_of(request) -> Membership:
    membership = getattr(request, "membership", None)
    if membership is None:
        raise Unauthenticated("Log in, or send an API key as `Authorization: Bearer <key>`.")
    return membership


def api_key_of(request) -> ApiKey | None:
    return getattr(request, "api_key", None)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents `Authorization: Bearer <API key>` in the OpenAPI schema."""

    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A Parley API key (`pk_…`), created on the settings page or with POST /api/v1/api-keys/.",
        }


# --- views ------------------------------------------------------------------------------------


def _valid(serializer_class, data, *, partial: bool = False) -> dict:
    serializer = serializer_class(data=data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _require_admin(membership: Membership) -> None:
    if not membership.is_admin:
        raise PermissionDenied("Only owners and admins can manage this organization.")


class OrganizationView(APIView):
    @extend_schema(
        summary="Your current organization (the API key's, or the session's choice)",
        responses={200: OrganizationSerializer, **error_responses()},
    )
    def get(self, request: Request) -> Response:
        membership = membership_of(request)
        return Response(OrganizationSerializer(membership.organization, context={"membership": membership}).data)

    @extend_schema(
        summary="Rename the organization (owners and admins)",
        request=OrganizationUpdateSerializer,
        responses={200: OrganizationSerializer, **error_responses(403, 422)},
    )
    def patch(self, request: Request) -> Response:
        membership = membership_of(request)
        data = _valid(OrganizationUpdateSerializer, request.data, partial=True)
        if "name" in data:
            services.organization_rename(membership=membership, name=data["name"])
            membership = selectors.membership_get(user=membership.user, organization_id=membership.organization_id)
        return Response(OrganizationSerializer(membership.organization, context={"membership": membership}).data)


class MemberListView(GenericAPIView):
    serializer_class = MemberSerializer

    @extend_schema(summary="Members of the organization and their roles", responses={200: MemberSerializer(many=True), **error_responses()})
    def get(self, request: Request) -> Response:
        membership = membership_of(request)
        page = self.paginate_queryset(selectors.organization_members(organization=membership.organization))
        return self.get_paginated_response(MemberSerializer(page, many=True).data)


class MemberDetailView(APIView):
    @extend_schema(summary="One member", responses={200: MemberSerializer, **error_responses()})
    def get(self, request: Request, membership_id: uuid.UUID) -> Response:
        membership = membership_of(request)
        member = selectors.member_get_in_organization(organization=membership.organization, membership_id=membership_id)
        return Response(MemberSerializer(member).data)

    @extend_schema(
        summary="Change a member's role (owners and admins; only owners touch owners)",
        request=MemberUpdateSerializer,
        responses={200: MemberSerializer, **error_responses(403, 422)},
    )
    def patch(self, request: Request, membership_id: uuid.UUID) -> Response:
        membership = membership_of(request)
        data = _valid(MemberUpdateSerializer, request.data, partial=True)
        if "role" not in data:  # nothing to change
            member = selectors.member_get_in_organization(organization=membership.organization, membership_id=membership_id)
            return Response(MemberSerializer(member).data)
        member = services.membership_change_role(membership=membership, target_id=membership_id, role=data["role"])
        return Response(MemberSerializer(member).data)

    @extend_schema(
        summary="Remove a member (owners and admins), or leave (your own membership)",
        description="The removed member's API keys for this organization are revoked.",
        responses={204: None, **error_responses(403, 422)},
    )
    def delete(self, request: Request, membership_id: uuid.UUID) -> Response:
        services.membership_remove(membership=membership_of(request), target_id=membership_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationListView(GenericAPIView):
    serializer_class = InvitationSerializer

    @extend_schema(
        summary="Pending invitations (owners and admins)",
        responses={200: InvitationSerializer(many=True), **error_responses(403)},
    )
    def get(self, request: Request) -> Response:
        membership = membership_of(request)
        _require_admin(membership)
        page = self.paginate_queryset(selectors.invitations_for_organization(organization=membership.organization))
        return self.get_paginated_response(InvitationSerializer(page, many=True).data)

    @extend_schema(
        summary="Invite someone by e-mail (owners and admins)",
        request=InvitationCreateSerializer,
        responses={201: InvitationSerializer, **error_responses(403, 422)},
    )
    def post(self, request: Request) -> Response:
        membership = membership_of(request)
        data = _valid(InvitationCreateSerializer, request.data)
        invitation = services.invitation_create(
            membership=membership,
            email=data["email"],
            role=data["role"],
            base_url=f"{request.scheme}://{request.get_host()}",
        )
        return Response(InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationDetailView(APIView):
    @extend_schema(
        summary="Revoke an invitation (owners and admins)", responses={204: None, **error_responses(403, 422)}
    )
    def delete(self, request: Request, invitation_id: uuid.UUID) -> Response:
        services.invitation_revoke(membership=membership_of(request), invitation_id=invitation_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyListView(GenericAPIView):
    serializer_class = ApiKeySerializer

    @extend_schema(
        summary="API keys: yours (owners and admins see every key of the organization)",
        responses={200: ApiKeySerializer(many=True), **error_responses()},
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.api_keys_for_member(membership=membership_of(request)))
        return self.get_paginated_response(ApiKeySerializer(page, many=True).data)

    @extend_schema(
        summary="Create an API key acting as you in this organization",
        description="The answer holds the secret, once: store it.",
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer, **error_responses(422)},
    )
    def post(self, request: Request) -> Response:
        membership = membership_of(request)
        data = _valid(ApiKeyCreateSerializer, request.data)
        key, secret = services.api_key_create(membership=membership, name=data["name"], expires_at=data["expires_at"])
        key.secret = secret
        return Response(ApiKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


class ApiKeyDetailView(APIView):
    @extend_schema(summary="One API key", responses={200: ApiKeySerializer, **error_responses()})
    def get(self, request: Request, key_id: uuid.UUID) -> Response:
        key = selectors.api_key_get_for_member(membership=membership_of(request), key_id=key_id)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(
        summary="Revoke an API key (yours; owners and admins: any of the organization)",
        responses={200: ApiKeySerializer, **error_responses()},
    )
    def delete(self, request: Request, key_id: uuid.UUID) -> Response:
        key = services.api_key_revoke(membership=membership_of(request), key_id=key_id)
        return Response(ApiKeySerializer(key).data)
