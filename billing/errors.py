"""Refusals of a turn. Interfaces turn them into the REST, OpenAI or websocket error shape."""

from config.errors import ParleyError


class ModelNotAllowed(ParleyError):
    """Your plan does not include this model."""

    code = "model_not_allowed"


class ModelNotPriced(ModelNotAllowed):
    """This model has no price in effect, so it cannot be used."""

    code = "model_not_allowed"


class MessageTooLong(ParleyError):
    """The message is longer than your plan allows."""

    code = "message_too_long"


class RateLimitExceeded(ParleyError):
    """Too many requests; try again shortly."""

    code = "rate_limited"


class BudgetExceeded(ParleyError):
    """The monthly budget is used up."""

    code = "budget_exceeded"


class ReservationNotFound(ParleyError):
    """No such reservation."""

    code = "not_found"
