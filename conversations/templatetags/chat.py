"""Template filters of the chat pages."""

import json
from decimal import Decimal, InvalidOperation

from django import template
from django.utils.safestring import SafeString, mark_safe

from conversations.markdown import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """Message markdown as HTML; safe because render_markdown sanitizes with an allow-list."""
    return mark_safe(render_markdown(text or ""))  # noqa: S308


@register.filter
def cost(value) -> str:
    """A cost in dollars without trailing zeros: 0.00012300 → $0.000123."""
    try:
        amount = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return ""
    if amount == 0:
        return "$0"
    text = f"{amount:.8f}".rstrip("0").rstrip(".")
    return f"${text}"


@register.filter
def compact_json(value) -> str:
    """A tool call's arguments or result as one line of JSON (escaped by the template)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
