"""The one small error type every app's errors derive from.

Interfaces turn a `ParleyError` into the REST error shape, the OpenAI error object or a
websocket `error` frame; `code` is one of the codes in shared/PROTOCOL.md where one fits.
"""


class ParleyError(Exception):
    code = "error"
    http_status = 400

    def __init__(self, message: str = "", *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class NotFound(ParleyError):
    """Not found."""

    code = "not_found"
    http_status = 404


class PermissionDenied(ParleyError):
    """Your role in this organization may not do that."""

    code = "permission_denied"
    http_status = 403


class InvalidInput(ParleyError):
    code = "invalid_input"
    http_status = 400


class Unauthenticated(ParleyError):
    code = "unauthenticated"
    http_status = 401
