"""The model registry: aliases → provider, vendor model id, limits, tools, fallbacks.

Rows are `llm.models.ModelConfig` (seeded by a migration, edited in the admin; while the table is
empty the built-in defaults of llm/defaults.py apply). A model whose
provider has no key configured is listed with `available=False` and never offered; `demo` is always
available, even without its row.

What a model can honour is `ModelInfo.features` (its provider's, llm.providers.capabilities, plus
"tools" when the row says so); `unsupported_params(request, model)` names the request's parameters
it cannot. `chain_for(alias, models)` is the chain of one call (sync), `serving_chain(request)` the
models that may really serve a request, as llm.chat tries them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from llm import conf
from llm.defaults import default_rows
from llm.errors import InvalidRequest, ModelUnavailable
from llm.models import ModelConfig, Provider
from llm.providers.capabilities import JSON_OBJECT, JSON_SCHEMA, provider_features
from llm.types import ChatRequest, Feature, ModelInfo


def model_features(provider: str, supports_tools: bool) -> frozenset[Feature]:
    features = provider_features(provider)
    return features | {"tools"} if supports_tools else features


DEMO = ModelInfo(
    alias="demo",
    provider="demo",
    vendor_model="parley-demo",
    context_window=32_768,
    max_output_tokens=4_096,
    supports_tools=True,
    display_name="Demo (built in, offline)",
    features=model_features("demo", True),
)


def provider_configured(provider: str, *, base_url: str = "", api_key_env: str = "") -> bool:
    if provider == Provider.DEMO:
        return True
    if provider == Provider.OPENAI_COMPATIBLE:
        # a local server may need no key; when the row names a key variable, it must be set
        return bool(base_url) and (not api_key_env or bool(conf.provider_key(provider, api_key_env)))
    return bool(conf.provider_key(provider))


def _info(row: ModelConfig) -> ModelInfo:
    extra = {}
    if row.provider == Provider.OPENAI_COMPATIBLE:
        extra = {"base_url": row.base_url, "api_key_env": row.api_key_env}
    return ModelInfo(
        alias=row.alias,
        provider=row.provider,
        vendor_model=row.vendor_model,
        context_window=row.context_window,
        max_output_tokens=row.max_output_tokens,
        supports_tools=row.supports_tools,
        fallbacks=tuple(a for a in (row.fallbacks or []) if isinstance(a, str) and a != row.alias),
        available=provider_configured(row.provider, base_url=row.base_url, api_key_env=row.api_key_env),
        display_name=row.display_name or row.alias,
        extra=extra,
        features=model_features(row.provider, row.supports_tools),
    )


def _rows() -> list[ModelConfig]:
    rows = list(ModelConfig.objects.all())
    return rows if rows else default_rows()


def models_all() -> list[ModelInfo]:
    """Every enabled model, with `.available` telling whether its provider is configured."""
    infos = [_info(row) for row in _rows() if row.enabled]
    if not any(info.alias == DEMO.alias for info in infos):
        infos.insert(0, DEMO)
    return infos


def models_available() -> list[ModelInfo]:
    return [info for info in models_all() if info.available]


def model_find(alias: str) -> ModelInfo | None:
    """The model, available or not; None for an unknown or disabled alias."""
    row = ModelConfig.objects.filter(alias=alias).first()
    if row is None and not ModelConfig.objects.exists():
        row = next((r for r in default_rows() if r.alias == alias), None)
    if row is not None:
        return _info(row) if row.enabled else None
    return DEMO if alias == DEMO.alias else None


def model_get(alias: str) -> ModelInfo:
    """The model to call. Raises ModelUnavailable for unknown, disabled or unconfigured aliases."""
    info = model_find(alias)
    if info is None:
        raise ModelUnavailable(f"Unknown model “{alias}”.")
    if not info.available:
        raise ModelUnavailable(f"The model “{alias}” is not configured on this server.", provider=info.provider)
    return info


# --- the chain of one turn, for llm.chat (async callers) ----------------------------------------
# A turn needs its model and fallbacks before the first byte. The rows are kept in memory for
# PARLEY_LLM_REGISTRY_CACHE_SECONDS (default 5) so a turn costs no database round trip; a save or
# delete in this process (the admin) drops the copy at once, other processes see it within the TTL.
# Availability is always computed fresh (it depends on the keys in the settings, not on the rows).

_snapshot: tuple[float, dict[str, ModelConfig]] | None = None


def rows_cached() -> dict[str, ModelConfig] | None:
    snapshot = _snapshot
    if snapshot is None or time.monotonic() - snapshot[0] > conf.registry_cache_seconds():
        return None
    return snapshot[1]


def rows_load() -> dict[str, ModelConfig]:
    """Read the rows (sync) and keep them for rows_cached()."""
    global _snapshot
    rows = {row.alias: row for row in _rows()}
    _snapshot = (time.monotonic(), rows)
    return rows


def rows_invalidate(**kwargs) -> None:
    global _snapshot
    _snapshot = None


def chain_from_rows(alias: str, rows: dict[str, ModelConfig], models: Sequence[str] | None = None) -> list[ModelInfo]:
    """The model and its available fallbacks, in order. Raises ModelUnavailable like model_get.

    `models` (a request's `models`): the aliases allowed to serve the call, primary first. The chain
    is then exactly those, in that order, instead of the row's fallbacks; `alias` always comes first
    (an entry naming it again is ignored) and unknown, disabled or unconfigured entries are skipped.
    """

    def find(name: str) -> ModelInfo | None:
        row = rows.get(name)
        if row is not None:
            return _info(row) if row.enabled else None
        return DEMO if name == DEMO.alias else None

    primary = find(alias)
    if primary is None:
        raise ModelUnavailable(f"Unknown model “{alias}”.")
    if not primary.available:
        raise ModelUnavailable(f"The model “{alias}” is not configured on this server.", provider=primary.provider)
    chain = [primary]
    for name in (primary.fallbacks if models is None else models):
        info = find(name)
        if info is not None and info.available and all(info.alias != m.alias for m in chain):
            chain.append(info)
    return chain


def rows_current() -> dict[str, ModelConfig]:
    """The registry rows: the in-memory copy while it is fresh, else read (sync: touches the database)."""
    rows = rows_cached()
    return rows if rows is not None else rows_load()


def chain_for(alias: str, models: Sequence[str] | None = None) -> list[ModelInfo]:
    """chain_from_rows on the current rows — for sync callers (the engine's database thread)."""
    return chain_from_rows(alias, rows_current(), models)


# --- what a model can honour --------------------------------------------------------------------

# request parameter → the feature it needs when it is set, in the order they are reported
_PARAMETERS: tuple[tuple[str, Feature], ...] = (
    ("stop", "stop"),
    ("seed", "seed"),
    ("top_p", "top_p"),
    ("user", "user"),
    ("presence_penalty", "presence_penalty"),
    ("frequency_penalty", "frequency_penalty"),
)


def unsupported_params(request: ChatRequest, model: ModelInfo) -> list[str]:
    """The request's parameters (OpenAI names) that `model` cannot honour; [] when it can serve it.

    Unset parameters, response_format {"type": "text"} and parallel_tool_calls=True (the default:
    parallel calls are allowed, never required) need nothing. parallel_tool_calls=False only counts
    when the request sends tools. "tools" is reported when the request sends tools to a model
    without tool support.
    """
    missing: list[str] = []
    if request.tools and not model.supports("tools"):
        missing.append("tools")
    kind = request.response_format_type
    if kind is not None and not model.supports(JSON_OBJECT if kind == "json_object" else JSON_SCHEMA):
        missing.append("response_format")
    for name, feature in _PARAMETERS:
        value = getattr(request, name)
        if value is not None and value != () and not model.supports(feature):
            missing.append(name)
    if request.parallel_tool_calls is False and request.tools and not model.supports("parallel_tool_calls"):
        missing.append("parallel_tool_calls")
    return missing


def unsupported_error(request: ChatRequest, model: ModelInfo) -> InvalidRequest | None:
    """An InvalidRequest naming what `model` cannot honour (the first parameter first), or None."""
    missing = unsupported_params(request, model)
    if not missing:
        return None
    names = ", ".join(missing)
    error = InvalidRequest(f"The model “{model.alias}” cannot honour {names}.", provider=model.provider)
    error.param = missing[0]  # type: ignore[attr-defined]  # for the entry points' error objects
    return error


def serving_filter(request: ChatRequest, chain: list[ModelInfo]) -> list[ModelInfo]:
    """The chain without the fallbacks that cannot honour the request. The primary stays, always."""
    return chain[:1] + [model for model in chain[1:] if not unsupported_params(request, model)]


def serving_chain(request: ChatRequest) -> list[ModelInfo]:
    """Every model that may serve `request`, in the order llm.chat tries them (sync).

    The primary (even when it cannot honour the request: llm.chat then refuses the call with
    InvalidRequest), then the allowed, available fallbacks that can honour every parameter.
    """
    return serving_filter(request, chain_for(request.model, request.models))
