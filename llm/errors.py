"""Typed errors of the llm layer. Adapters translate every SDK exception into one of these."""


class LLMError(Exception):
    """Base of every error a provider call can end in."""

    code = "provider_error"
    retryable = False

    def __init__(self, message: str = "", *, provider: str = "", status: int | None = None):
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.provider = provider
        self.status = status


class RateLimited(LLMError):
    retryable = True

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class QuotaExceeded(LLMError):
    """A 429 that means the account's spend limit or quota is reached: retrying cannot help."""


class Overloaded(LLMError):
    retryable = True


class ProviderUnavailable(LLMError):
    """5xx, refused or dropped connections, streams cut mid-way."""

    retryable = True


class Timeout(LLMError):
    retryable = True


class ContextTooLong(LLMError):
    pass


class InvalidRequest(LLMError):
    pass


class AuthFailed(LLMError):
    pass


class ModelUnavailable(LLMError):
    """Unknown alias, or its provider has no key configured."""
