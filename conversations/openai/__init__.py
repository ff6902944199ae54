"""The OpenAI-compatible interface (`/v1/`): parse (schemas), render (shapes), views over the turn engine,
and the OpenAPI description (openapi)."""
