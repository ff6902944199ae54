"""Markdown of messages to safe HTML: markdown-it (raw HTML off), Pygments, then nh3.

Model output is untrusted (a prompt injection can make a model write anything), so the rendered
HTML goes through an allow-list sanitizer even though markdown-it already escapes raw HTML: the
sanitizer is what guarantees that no `on*` attribute, `<script>`, `javascript:` link or style
survives. Images are not loaded (a markdown image is a request to a URL the model chose, a known
way to leak a conversation); `![alt](url)` shows as a link. static/js/chat.js renders the
same way in the browser while an answer streams (markdown-it + DOMPurify, the same allow-list).
"""

from __future__ import annotations

import re
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li",
    "strong", "em", "s", "del", "code", "pre", "a", "table", "thead", "tbody", "tr", "th", "td", "span", "div",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "nofollow noopener noreferrer"
MAX_HIGHLIGHT_CHARS = 100_000  # longer code blocks are shown plain (highlighting is not free)

_LANGUAGE = re.compile(r"^[A-Za-z0-9_+#.-]{1,32}$")
_TOKEN_CLASSES = re.compile(r"^[A-Za-z0-9]{1,4}( [A-Za-z0-9]{1,4})*$")
_ALIGN = re.compile(r"^text-align:\s*(left|right|center)$")


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "class":
        if tag == "code" and value.startswith("language-") and _LANGUAGE.match(value[9:]):
            return value
        if tag == "span" and _TOKEN_CLASSES.match(value):
            return value
        return None
    if attribute == "style":  # only the column alignment markdown tables produce
        return value if _ALIGN.match(value.strip().rstrip(";")) else None
    return value


def _highlight(code: str, language: str, _attrs) -> str:
    """A fenced block with a known language → Pygments spans; otherwise markdown-it escapes it."""
    language = (language or "").strip().lower()
    if not language or not _LANGUAGE.match(language) or len(code) > MAX_HIGHLIGHT_CHARS:
        return ""
    try:
        lexer = get_lexer_by_name(language)
    except ClassNotFound:
        return ""
    body = pygments_highlight(code, lexer, HtmlFormatter(nowrap=True))
    # markdown-it uses the result as is when it starts with <pre.
    return f'<pre><code class="language-{language}">{body}</code></pre>\n'


def _image_as_link(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    src = escapeHtml(token.attrGet("src") or "")
    alt = escapeHtml(self.renderInlineAsText(token.children or [], options, env)) or src
    return f'<a href="{src}">{alt}</a>'


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _image_as_link)
    return md


def sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        clean_content_tags={"script", "style"},
        attributes={**ALLOWED_ATTRIBUTES, "code": {"class"}, "span": {"class"}},
        attribute_filter=_attribute_filter,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        strip_comments=True,
    )


def render_markdown(text: str) -> str:
    """Safe HTML for a message's markdown (user or model text)."""
    if not text:
        return ""
    return sanitize(_parser().render(text))
