"""The model registry: aliases → provider, vendor model id, limits, tools, fallbacks.

Rows are `llm.models.ModelConfig` (seeded by a migration, edited in the admin; while the table is
empty the built-in defaults of llm/defaults.py apply). A model whose
provider has no key configured is listed with `available=False` and never offered; `demo` is always
available, even without its row.
"""

from __future__ import annotations

import time

from llm import conf
from llm.defaults import default_rows
from llm.errors import ModelUnavailable
from llm.models import ModelConfig, Provider
from llm.types import ModelInfo

DEMO = ModelInfo(
    alias="demo",
    provider="demo",
    vendor_model="parley-demo",
    context_window=32_768,
    max_output_tokens=4_096,
    supports_tools=True,
    display_name="Demo (built in, offline)",
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


def chain_from_rows(alias: str, rows: dict[str, ModelConfig]) -> list[ModelInfo]:
    """The model and its available fallbacks, in order. Raises ModelUnavailable like model_get."""

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
    for name in primary.fallbacks:
        info = find(name)
        if info is not None and info.available and all(info.alias != m.alias for m in chain):
            chain.append(info)
    return chain
