from django.utils.functional import SimpleLazyObject

from accounts.selectors import memberships_for_user


def current_organization(request) -> dict:
    """`membership` (the request's current one), `user_memberships` (for the organization switcher,
    evaluated only when a template uses it) and `organization_suspended` (the current organization
    was suspended by staff: base.html says so and why, the chat page refuses to send)."""
    membership = getattr(request, "membership", None)
    if membership is None or not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    user = request.user
    return {
        "membership": membership,
        "user_memberships": SimpleLazyObject(lambda: memberships_for_user(user=user)),
        "organization_suspended": membership.organization.is_suspended,
    }
