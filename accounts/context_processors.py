from django.utils.functional import SimpleLazyObject

from accounts.selectors import memberships_for_user


def current_organization(request) -> dict:
    """`membership` (the request's current one) and `user_memberships` (for the organization switcher,
    evaluated only when a template uses it)."""
    membership = getattr(request, "membership", None)
    if membership is None or not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    user = request.user
    return {
        "membership": membership,
        "user_memberships": SimpleLazyObject(lambda: memberships_for_user(user=user)),
    }
