"""Model output rendered server-side can never run script: markdown-it (no raw HTML) + nh3 allow-list."""

from html.parser import HTMLParser

import pytest

from conversations.markdown import ALLOWED_TAGS, render_markdown, sanitize

PAYLOADS = [
    "<img src=x onerror=window.__xss=1>",
    '<img src="x" onerror="alert(1)">',
    "<script>window.__xss=1</script>",
    "<svg onload=alert(1)>",
    '<a href="javascript:alert(1)">click</a>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](  javascript:alert(1))",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](javascript:alert(1))",
    '<iframe src="https://evil.example"></iframe>',
    "<style>body{display:none}</style>",
    '<div style="position:fixed;inset:0">overlay</div>',
    "```html\n<script>alert(1)</script>\n```",
    "```js\" onmouseover=\"alert(1)\n x\n```",
    "`<img src=x onerror=alert(1)>`",
    "<details open ontoggle=alert(1)>",
    '[x](https://ok.example "title\\" onmouseover=\\"alert(1)")',
]


class Elements(HTMLParser):
    """The tags and attributes a browser would build from the HTML."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payloads_render_inert(payload):
    html = render_markdown(payload)
    for tag, attrs in Elements(html).elements:
        assert tag in ALLOWED_TAGS, (payload, tag)
        assert tag not in {"script", "img", "svg", "iframe", "style", "details", "form", "input"}
        for name, value in attrs.items():
            assert not name.startswith("on"), (payload, tag, name)
            assert name in {"href", "title", "rel", "class", "start", "style"}, (payload, tag, name)
            if name == "href":
                assert value.split(":", 1)[0].lower() in {"http", "https", "mailto"} or ":" not in value, (payload, value)
            if name == "style":
                assert tag in {"th", "td"} and value.startswith("text-align:"), (payload, tag, value)


def test_raw_html_is_shown_as_text():
    assert render_markdown("<b>bold?</b>") == "<p>&lt;b&gt;bold?&lt;/b&gt;</p>\n"


def test_links_are_http_https_or_mailto_and_get_rel():
    html = render_markdown("[a](https://example.com) [b](mailto:me@example.com) [c](ftp://example.com/x)")
    assert '<a href="https://example.com" rel="nofollow noopener noreferrer">a</a>' in html
    assert '<a href="mailto:me@example.com" rel="nofollow noopener noreferrer">b</a>' in html
    assert "ftp:" not in html


def test_images_become_links_and_are_never_loaded():
    html = render_markdown("![a chart](https://example.com/leak?data=secret)")
    assert "<img" not in html
    assert '<a href="https://example.com/leak?data=secret" rel="nofollow noopener noreferrer">a chart</a>' in html


def test_code_is_highlighted_and_escaped():
    html = render_markdown("```python\nx = '<script>'\n```")
    assert html.startswith('<pre><code class="language-python">')
    assert '<span class="n">x</span>' in html
    assert "&lt;script&gt;" in html and "<script" not in html


def test_unknown_language_is_plain_escaped_code():
    html = render_markdown("```nosuchlang\n<b>x</b>\n```")
    assert html == '<pre><code class="language-nosuchlang">&lt;b&gt;x&lt;/b&gt;\n</code></pre>\n'


def test_common_markdown_survives():
    html = render_markdown("# T\n\n**b** _i_ ~~s~~ `c`\n\n- one\n- two\n\n> q\n\n| a | b |\n|:-|-:|\n| 1 | 2 |")
    for fragment in ("<h1>T</h1>", "<strong>b</strong>", "<em>i</em>", "<s>s</s>", "<code>c</code>",
                     "<li>one</li>", "<blockquote>", '<th style="text-align:left">a</th>', '<td style="text-align:right">2</td>'):
        assert fragment in html, fragment


def test_sanitizer_is_an_allow_list_even_for_our_own_html():
    """Defense in depth: if the renderer ever let HTML through, the sanitizer still removes it."""
    dirty = (
        '<p onclick="x()">a</p><span class="k" onmouseover="x()">k</span><code class="evil">c</code>'
        '<a href="javascript:x()">j</a><a href="https://ok">ok</a><form><input></form><table><tr><th style="color:red">t</th></tr></table>'
    )
    clean = sanitize(dirty)
    assert clean == (
        '<p>a</p><span class="k">k</span><code>c</code><a rel="nofollow noopener noreferrer">j</a>'
        '<a href="https://ok" rel="nofollow noopener noreferrer">ok</a><table><tbody><tr><th>t</th></tr></tbody></table>'
    )


def test_empty():
    assert render_markdown("") == ""
