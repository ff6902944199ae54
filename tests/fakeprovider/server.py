"""A scripted fake of the OpenAI, Anthropic and Gemini streaming APIs on a real socket.

`FakeProviderServer().start()` listens on 127.0.0.1:<free port> in a background thread. The real SDKs
talk to it through their base URLs:

    OpenAI     POST {url}/v1/chat/completions          (base_url = {url}/v1)
    Anthropic  POST {url}/v1/messages                  (base_url = {url})
    Gemini     POST {url}/{v1|v1beta}/models/M:streamGenerateContent?alt=sse   (base_url = {url})

Each vendor has its own queue of steps (tests/fakeprovider/script.py); a request takes the next one,
or `default` when the queue is empty. Every request is recorded (`.requests`), with the generation
parameters it carried in its vendor's own shape (`RecordedRequest.params`).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .script import FakeError, Reply, Step, reply
from .usage import VENDOR_USAGE, resolve, vendor_input_tokens

STALL_LIMIT = 60.0  # a stalled stream is released at the latest after this, or when the test ends


# The generation parameters of each vendor's request body, by their wire names (RecordedRequest.params).
PARAMETERS: dict[str, tuple[str, ...]] = {
    "openai": ("stop", "response_format", "seed", "top_p", "user", "parallel_tool_calls", "presence_penalty",
               "frequency_penalty", "tool_choice", "temperature", "max_tokens", "max_completion_tokens"),
    "anthropic": ("stop_sequences", "output_config", "top_p", "metadata", "tool_choice", "temperature",
                  "max_tokens", "top_k"),
    # Gemini: the fields of generationConfig, plus toolConfig
    "gemini": ("stopSequences", "responseMimeType", "responseJsonSchema", "responseSchema", "seed", "topP",
               "presencePenalty", "frequencyPenalty", "temperature", "maxOutputTokens", "topK", "toolConfig"),
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    vendor: str = ""  # "openai" | "anthropic" | "gemini"
    # What the fake streamed and bills for this request (the vendor's side of the books):
    input_tokens: int | None = None  # the input it bills (None: an error answer, nothing billed)
    deltas_sent: int = 0  # text deltas written to the socket (one output token each)
    # the usage of the whole answer, once streamed to its end (input, output, cached; OpenAI sends it
    # in the stream only when asked to, but bills it either way)
    reported: tuple[int, int, int] | None = None
    ended: bool = False  # the stream reached its normal end

    @property
    def billed(self) -> tuple[int, int]:
        """(input, output) tokens the vendor bills: the usage it reported, else the prompt and the
        deltas it sent before the stream was cut (a vendor bills what it generated)."""
        if self.reported is not None:
            return self.reported[0] + self.reported[2], self.reported[1]
        return (self.input_tokens or 0) if self.deltas_sent or self.ended else 0, self.deltas_sent

    @property
    def params(self) -> dict[str, Any]:
        """The generation parameters this request carried, as its vendor names them (absent: not sent).

        OpenAI: top-level `stop`, `response_format`, `seed`, `top_p`, `user`, `parallel_tool_calls`, the
        penalties, `tool_choice`…; Anthropic: `stop_sequences`, `output_config`, `top_p`, `metadata`,
        `tool_choice`…; Gemini: the fields of `generationConfig` (`stopSequences`, `responseMimeType`,
        `responseJsonSchema`, `seed`, `topP`, `presencePenalty`…) and `toolConfig`.
        """
        source = self.body
        if self.vendor == "gemini":
            source = {**(self.body.get("generationConfig") or {}), "toolConfig": self.body.get("toolConfig")}
        return {name: source[name] for name in PARAMETERS.get(self.vendor, ()) if source.get(name) is not None}

    @property
    def model(self) -> str:
        if "model" in self.body:
            return str(self.body["model"])
        # Gemini: /v1/models/<model>:streamGenerateContent
        tail = self.path.split("/models/", 1)[-1]
        return tail.split(":", 1)[0]


@dataclass
class VendorScript:
    """The scripted answers of one vendor: `script([...])`, then inspect `requests`."""

    name: str
    # the step when the queue is empty; or a responder: a callable(RecordedRequest) -> Step
    default: Step | Callable[[RecordedRequest], Step] = field(
        default_factory=lambda: reply("Hello", " from", " the", " fake", " provider."))
    requests: list[RecordedRequest] = field(default_factory=list)
    aborted: int = 0  # streams the client closed before their end (a write hit a closed socket)
    _queue: deque[Step] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, steps: list[Step] | Step) -> VendorScript:
        """Replace the queue: the next requests get these steps, in order."""
        with self._lock:
            self._queue.clear()
            self._queue.extend(steps if isinstance(steps, list) else [steps])
        return self

    def then(self, *steps: Step) -> VendorScript:
        """Append steps to the queue."""
        with self._lock:
            self._queue.extend(steps)
        return self

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.aborted = 0
            self.default = reply("Hello", " from", " the", " fake", " provider.")

    def _take(self, request: RecordedRequest) -> Step:
        with self._lock:
            self.requests.append(request)
            step = self._queue.popleft() if self._queue else self.default
        # A responder (a callable) picks the step from the request itself: concurrent clients each
        # get the answer their own prompt asks for, whatever order their requests arrive in.
        return step(request) if callable(step) else step


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that closes its connection (a stopped stream, a pooled keep-alive dropped) is
        # normal here; anything else is still printed.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeProviderServer:
    def __init__(self) -> None:
        self.openai = VendorScript("openai")
        self.anthropic = VendorScript("anthropic")
        self.gemini = VendorScript("gemini")
        self._release = threading.Event()
        self._httpd: _QuietHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int | None = None) -> FakeProviderServer:
        """Listen (again): on `port`, else on the port of an earlier start, else on a free one."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _QuietHTTPServer(("127.0.0.1", self._port if port is None else port), handler)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-provider", daemon=True)
        self._thread.start()
        return self

    def kill(self) -> None:
        """The provider dies: every open connection is cut mid-body and new ones are refused until
        `start()` (which listens on the same port again)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        with self._connections_lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.release_stalls()  # streams waiting between deltas wake up and find their socket gone

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def reset(self) -> None:
        """Forget scripts and recorded requests; release streams stalled by an earlier test."""
        self.release_stalls()
        for vendor in (self.openai, self.anthropic, self.gemini):
            vendor.reset()

    def release_stalls(self) -> None:
        self._release.set()
        self._release = threading.Event()

    @property
    def port(self) -> int:
        assert self._port, "not started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def gemini_base_url(self) -> str:
        return self.url

    def vendor_for_path(self, path: str) -> VendorScript | None:
        if path.endswith("/chat/completions"):
            return self.openai
        if path.endswith("/messages"):
            return self.anthropic
        if ":streamGenerateContent" in path or ":generateContent" in path:
            return self.gemini
        return None


# --- HTTP ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeProviderServer  # set by FakeProviderServer.start

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._connections_lock:
            self.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.fake._connections_lock:
            self.fake._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:  # the connection was cut (FakeProviderServer.kill)
            pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        vendor = self.fake.vendor_for_path(path)
        if vendor is None:
            self._send_json(404, {"error": {"message": f"unknown path {path}"}})
            return
        recorded = RecordedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                   vendor.name)
        step = vendor._take(recorded)
        if isinstance(step, Reply):
            if step.usage == VENDOR_USAGE:
                recorded.input_tokens = vendor_input_tokens(vendor.name, body)
                step = resolve(step, vendor.name, body)
            else:
                usage = step.resolved_usage()
                recorded.input_tokens = usage[0] + usage[2] if usage is not None else None
        release = self.fake._release
        renderer = _RENDERERS[vendor.name](self, body, release, recorded)
        try:
            if isinstance(step, FakeError):
                if step.first_byte_delay:
                    release.wait(step.first_byte_delay)
                status, payload, headers = renderer.error(step)
                self._send_json(status, payload, headers)
            else:
                renderer.stream(step)
        except OSError:  # BrokenPipe, ConnectionReset; a socket cut by kill()
            with vendor._lock:
                vendor.aborted += 1
            self.close_connection = True

    # --- writing ---------------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    burst: list[bytes] | None = None

    def chunk(self, data: bytes) -> None:
        if self.burst is not None:
            self.burst.append(b"%x\r\n%s\r\n" % (len(data), data))
            return
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        if self.burst is not None:
            self.wfile.write(b"".join(self.burst))
            self.burst = None
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def drop(self) -> None:
        """Cut the connection in the middle of the chunked body."""
        self.wfile.write(b"40\r\n{\"partial")
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --- rendering, one class per vendor -------------------------------------------------------


class _Renderer:
    vendor = ""

    def __init__(self, handler: _Handler, body: dict[str, Any], release: threading.Event,
                 recorded: RecordedRequest | None = None) -> None:
        self.h = handler
        self.body = body
        self.release = release
        self.recorded = recorded if recorded is not None else RecordedRequest("POST", "", {}, body)

    # subclasses: error(), start(), text(), tool_calls(), finish(), stream_error_event()
    def stream(self, step: Reply) -> None:
        if step.first_byte_delay:
            self.release.wait(step.first_byte_delay)
        self.h.start_stream()
        if step.burst:
            self.h.burst = []
        self.start(step)
        for index, text in enumerate(step.text):
            if self._interrupt(step, index):
                return
            if index and step.delta_delay:
                self.release.wait(step.delta_delay)
            self.text(index, text)
            self.recorded.deltas_sent += 1
        if self._interrupt(step, len(step.text)):
            return
        if step.tool_calls:
            self.tool_calls(step)
        self.finish(step)
        self.h.end_stream()
        self.recorded.reported = step.resolved_usage()
        self.recorded.ended = True

    def _interrupt(self, step: Reply, index: int) -> bool:
        """Act on stall/drop/error options due after `index` deltas. True: the stream is over."""
        if step.stall_after == index:
            self.release.wait(STALL_LIMIT)
            self.h.close_connection = True
            return True
        if step.drop_after == index:
            self.h.drop()
            return True
        if step.error_after is not None and step.error_after[0] == index:
            self.stream_error_event(step.error_after[1])
            self.h.end_stream()
            return True
        return False

    def sse(self, data: Any, event: str | None = None) -> None:
        prefix = f"event: {event}\n".encode() if event else b""
        self.h.chunk(prefix + b"data: " + json.dumps(data).encode() + b"\n\n")

    @staticmethod
    def retry_headers(error: FakeError) -> dict[str, str]:
        if error.retry_after is None:
            return {}
        value = error.retry_after
        return {"Retry-After": str(int(value)) if float(value).is_integer() else str(value)}


class _OpenAI(_Renderer):
    vendor = "openai"
    ERRORS: dict[str, tuple[int, str, str | None, str]] = {
        "rate_limit": (429, "requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again."),
        "quota": (429, "insufficient_quota", "insufficient_quota",
                  "You exceeded your current quota, please check your plan and billing details."),
        "overloaded": (503, "server_error", None, "The engine is currently overloaded, please try again later."),
        "server": (500, "server_error", None, "The server had an error while processing your request."),
        "unavailable": (503, "server_error", None, "Service unavailable."),
        "auth": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        "invalid": (400, "invalid_request_error", None, "Invalid request."),
        "context": (400, "invalid_request_error", "context_length_exceeded",
                    "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 tokens."),
        "not_found": (404, "invalid_request_error", "model_not_found", "The model does not exist."),
    }

    def _error_body(self, error: FakeError) -> tuple[int, dict[str, Any]]:
        status, kind, code, message = self.ERRORS[error.kind]
        return error.status or status, {
            "error": {"message": error.message or message, "type": kind, "param": None, "code": code}
        }

    def error(self, error: FakeError) -> tuple[int, Any, dict[str, str]]:
        status, body = self._error_body(error)
        return status, body, self.retry_headers(error)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.body.get("model", "fake"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def start(self, step: Reply) -> None:
        self.sse(self._chunk({"role": "assistant", "content": ""}))

    def text(self, index: int, text: str) -> None:
        self.sse(self._chunk({"content": text}))

    def tool_calls(self, step: Reply) -> None:
        for i, call in enumerate(step.tool_calls):
            args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
            head = {"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            self.sse(self._chunk({"tool_calls": [head]}))
            middle = len(args) // 2
            for part in (args[:middle], args[middle:]):
                self.sse(self._chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))

    def finish(self, step: Reply) -> None:
        self.sse(self._chunk({}, step.resolved_finish()))
        usage = step.resolved_usage()
        if usage is not None and (self.body.get("stream_options") or {}).get("include_usage"):
            inp, out, cached = usage
            self.sse({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.body.get("model", "fake"), "choices": [],
                "usage": {
                    "prompt_tokens": inp + cached, "completion_tokens": out, "total_tokens": inp + cached + out,
                    "prompt_tokens_details": {"cached_tokens": cached},
                },
            })
        self.h.chunk(b"data: [DONE]\n\n")

    def stream_error_event(self, error: FakeError) -> None:
        self.sse(self._error_body(error)[1])


class _Anthropic(_Renderer):
    vendor = "anthropic"
    ERRORS: dict[str, tuple[int, str, str]] = {
        "rate_limit": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
        "quota": (429, "rate_limit_error", "This request would exceed your organization's spend limit."),
        "overloaded": (529, "overloaded_error", "Overloaded"),
        "server": (500, "api_error", "Internal server error"),
        "unavailable": (503, "api_error", "Service unavailable"),
        "auth": (401, "authentication_error", "invalid x-api-key"),
        "invalid": (400, "invalid_request_error", "Invalid request."),
        "context": (400, "invalid_request_error", "prompt is too long: 208121 tokens > 200000 maximum"),
        "not_found": (404, "not_found_error", "model: not-a-model"),
    }
    STOP = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}

    def _error_body(self, error: FakeError) -> tuple[int, dict[str, Any]]:
        status, kind, message = self.ERRORS[error.kind]
        inner: dict[str, Any] = {"type": kind, "message": error.message or message}
        if error.kind == "quota":
            inner["details"] = {"error_code": "enforced_spend_limit_reached"}
        return error.status or status, {"type": "error", "error": inner, "request_id": "req_fake"}

    def error(self, error: FakeError) -> tuple[int, Any, dict[str, str]]:
        status, body = self._error_body(error)
        return status, body, self.retry_headers(error)

    def start(self, step: Reply) -> None:
        usage = step.resolved_usage() or (0, 0, 0)
        self.sse({
            "type": "message_start",
            "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": self.body.get("model", "fake"),
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": usage[0], "output_tokens": 1, "cache_read_input_tokens": usage[2],
                          "cache_creation_input_tokens": 0},
            },
        }, "message_start")
        self.sse({"type": "ping"}, "ping")
        self.block = 0
        if step.text:
            self.sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                     "content_block_start")

    def text(self, index: int, text: str) -> None:
        self.sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                 "content_block_delta")

    def tool_calls(self, step: Reply) -> None:
        if step.text:
            self.sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        first = 1 if step.text else 0
        for offset, call in enumerate(step.tool_calls):
            index = first + offset
            self.sse({"type": "content_block_start", "index": index,
                      "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}},
                     "content_block_start")
            args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
            middle = len(args) // 2
            for part in (args[:middle], args[middle:]):
                self.sse({"type": "content_block_delta", "index": index,
                          "delta": {"type": "input_json_delta", "partial_json": part}}, "content_block_delta")
            self.sse({"type": "content_block_stop", "index": index}, "content_block_stop")
        self.tools_closed = True

    def finish(self, step: Reply) -> None:
        if step.text and not step.tool_calls:
            self.sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        delta: dict[str, Any] = {"type": "message_delta",
                                 "delta": {"stop_reason": self.STOP.get(step.resolved_finish(), "end_turn"),
                                           "stop_sequence": None}}
        usage = step.resolved_usage()
        if usage is not None:
            # "one or more" message_delta events, each with the running total of output tokens (not an
            # increment): a client that adds them up over-counts
            if usage[1] >= 2:
                self.sse({"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None},
                          "usage": {"output_tokens": usage[1] // 2}}, "message_delta")
            delta["usage"] = {"output_tokens": usage[1]}
        self.sse(delta, "message_delta")
        self.sse({"type": "message_stop"}, "message_stop")

    def stream_error_event(self, error: FakeError) -> None:
        self.sse(self._error_body(error)[1], "error")


class _Gemini(_Renderer):
    vendor = "gemini"
    ERRORS: dict[str, tuple[int, str, str]] = {
        "rate_limit": (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
        "quota": (429, "RESOURCE_EXHAUSTED",
                  "You exceeded your current quota, please check your plan and billing details."),
        "overloaded": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        "server": (500, "INTERNAL", "An internal error has occurred."),
        "unavailable": (503, "UNAVAILABLE", "The service is currently unavailable."),
        "auth": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
        "invalid": (400, "INVALID_ARGUMENT", "Invalid request."),
        "context": (400, "INVALID_ARGUMENT",
                    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."),
        "not_found": (404, "NOT_FOUND", "models/not-a-model is not found for API version v1."),
    }
    FINISH = {"stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}

    def _error_body(self, error: FakeError) -> tuple[int, dict[str, Any]]:
        status, code_name, message = self.ERRORS[error.kind]
        status = error.status or status
        details: list[dict[str, Any]] = []
        if error.kind == "auth":
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com"})
        if error.kind == "quota":
            details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]})
        if error.retry_after is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{error.retry_after}s"})
        return status, {"error": {"code": status, "message": error.message or message, "status": code_name,
                                  "details": details}}

    def error(self, error: FakeError) -> tuple[int, Any, dict[str, str]]:
        status, body = self._error_body(error)
        return status, body, self.retry_headers(error)

    def _chunk(self, parts: list[dict[str, Any]], finish: str | None = None,
               usage: tuple[int, int, int] | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        data: dict[str, Any] = {"candidates": [candidate], "modelVersion": self.h.path.split("/models/")[-1].split(":")[0],
                                "responseId": "resp_fake"}
        if usage is not None:
            inp, out, cached = usage
            data["usageMetadata"] = {"promptTokenCount": inp + cached, "candidatesTokenCount": out,
                                     "totalTokenCount": inp + cached + out,
                                     **({"cachedContentTokenCount": cached} if cached else {})}
        return data

    def start(self, step: Reply) -> None:
        pass

    def text(self, index: int, text: str) -> None:
        self.sse(self._chunk([{"text": text}]))

    def tool_calls(self, step: Reply) -> None:
        parts = []
        for call in step.tool_calls:
            args = call.arguments
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    args = {"_malformed": args}
            parts.append({"functionCall": {"name": call.name, "args": args, "id": call.id}})
        self.sse(self._chunk(parts))

    def finish(self, step: Reply) -> None:
        self.sse(self._chunk([{"text": ""}], self.FINISH.get(step.resolved_finish(), "STOP"), step.resolved_usage()))

    def stream_error_event(self, error: FakeError) -> None:
        self.sse(self._error_body(error)[1])


_RENDERERS: dict[str, type[_Renderer]] = {"openai": _OpenAI, "anthropic": _Anthropic, "gemini": _Gemini}
