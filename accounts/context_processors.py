def current_organization(request) -> dict:
    membership = getattr(request, "membership", None)
    if membership is None or not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"membership": membership}
