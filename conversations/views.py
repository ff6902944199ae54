"""The chat pages: the conversation list, the chat page, and the personas of an organization.

Thin: resolve the member (request.membership), call a selector or service, render. The answer
itself streams over the websocket (consumers.py); static/js/chat.js drives the page.
"""

from __future__ import annotations

from functools import wraps
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.errors import InvalidInput, NotFound, OrganizationSuspended, ParleyError
from conversations import services
from conversations.forms import ConversationStartForm, PersonaForm
from conversations.frames import cost_str
from conversations.markdown import render_markdown
from conversations.models import Conversation, Message, Role, Status
from conversations.selectors import (
    conversation_get_for_member,
    conversations_page_for_member,
    message_get_for_member,
    messages_for_conversation,
    persona_get_for_member,
    personas_for_organization,
)

PAGE_SIZE = 25
SIDEBAR_SIZE = 30
HISTORY_SIZE = 200


def member_required(view):
    """Logged in, with a current organization (request.membership)."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if getattr(request, "membership", None) is None:
            messages.info(request, "Join or create an organization to chat.")
            return redirect("/dashboard/")
        return view(request, *args, **kwargs)

    return wrapped


def _admin_only(request: HttpRequest) -> None:
    if not request.membership.is_admin:
        raise PermissionDenied("Only owners and admins manage personas.")


def _conversation_or_404(request: HttpRequest, conversation_id: UUID) -> Conversation:
    try:
        return conversation_get_for_member(membership=request.membership, conversation_id=conversation_id)
    except NotFound:
        raise Http404("Conversation not found.") from None


def _next_url(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default


def models_for_member(membership) -> list:
    """Models the member may pick: available ones (a provider is configured) the tier allows and that
    have a price in effect (an unpriced model is refused on use, so it is not offered)."""
    from billing.selectors import price_for
    from llm.registry import models_available

    allowed = set(membership.organization.tier.allowed_models)
    return [info for info in models_available() if info.alias in allowed and price_for(info.alias) is not None]


# --- the list ---------------------------------------------------------------------------------


@member_required
@require_GET
def conversation_list(request: HttpRequest) -> HttpResponse:
    archived = request.GET.get("archived") == "1"
    query = request.GET.get("q", "").strip()[:200]
    page = Paginator(
        conversations_page_for_member(membership=request.membership, archived=archived, search=query), PAGE_SIZE
    ).get_page(request.GET.get("page"))
    return render(
        request,
        "conversations/list.html",
        {"page": page, "conversations": page.object_list, "archived": archived, "query": query},
    )


@member_required
@require_POST
def conversation_archive(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    archived = request.POST.get("archived", "1") == "1"
    _conversation_or_404(request, conversation_id)
    services.conversation_update(membership=request.membership, conversation_id=conversation_id, archived=archived)
    messages.success(request, "Conversation archived." if archived else "Conversation restored.")
    return redirect(_next_url(request, reverse("conversations:list")))


@member_required
@require_http_methods(["GET", "POST"])
def conversation_delete(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    conversation = _conversation_or_404(request, conversation_id)
    if request.method == "POST":
        try:
            services.conversation_delete(membership=request.membership, conversation_id=conversation.id)
        except ParleyError as exc:
            messages.error(request, exc.message)
            return redirect("conversations:detail", conversation_id=conversation.id)
        messages.success(request, "Conversation deleted.")
        return redirect(_next_url(request, reverse("conversations:list")))
    return render(request, "conversations/confirm_delete.html", {"conversation": conversation})


@member_required
@require_POST
def conversation_rename(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    _conversation_or_404(request, conversation_id)
    services.conversation_update(
        membership=request.membership, conversation_id=conversation_id, title=request.POST.get("title", "")[:200]
    )
    return redirect(_next_url(request, reverse("conversations:detail", args=[conversation_id])))


# --- the chat page ----------------------------------------------------------------------------


def _default_model(models: list, recent: list[Conversation]) -> str:
    """For a new chat: the model of the member's latest conversation, else the first real model."""
    aliases = [info.alias for info in models]
    if recent and recent[0].model in aliases:
        return recent[0].model
    real = [alias for alias in aliases if alias != "demo"]
    return (real or aliases or [""])[0]


def _chat_page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    membership = request.membership
    history: list[Message] = []
    earlier = False
    if conversation is not None:
        # The latest messages only (a long conversation would make a slow page), unless asked.
        show_all = request.GET.get("all") == "1"
        history = messages_for_conversation(conversation=conversation, last=None if show_all else HISTORY_SIZE + 1)
        earlier = len(history) > HISTORY_SIZE and not show_all
        if earlier:
            history = history[1:]
    streaming = next((m for m in history if m.role == Role.ASSISTANT and m.status == Status.STREAMING), None)
    models = models_for_member(membership)
    recent = list(conversations_page_for_member(membership=membership)[:SIDEBAR_SIZE])
    current_model = conversation.model if conversation else _default_model(models, recent)
    last_user = next((m for m in reversed(history) if m.role == Role.USER), None)
    last_answer = history[-1] if history and history[-1].role == Role.ASSISTANT else None
    config = {
        "conversation": str(conversation.id) if conversation else None,
        "model": current_model,
        "maxChars": membership.organization.tier.max_message_chars,
        "socketPath": "/ws/chat/",
        "chatUrl": reverse("conversations:detail", args=["00000000-0000-0000-0000-000000000000"]),
        "startUrl": reverse("conversations:start"),
        "streaming": (
            {"id": str(streaming.id), "seq": streaming.last_seq, "content": streaming.content} if streaming else None
        ),
    }
    return render(
        request,
        "conversations/chat.html",
        {
            "conversation": conversation,
            "history": history,
            "earlier": earlier,
            "last_user_id": last_user.id if last_user else None,
            "last_answer_id": last_answer.id if last_answer else None,
            "models": models,
            "current_model": current_model,
            "personas": personas_for_organization(organization=membership.organization) if conversation is None else [],
            "recent": recent,
            "chat_config": config,
        },
    )


@member_required
@require_GET
def chat_new(request: HttpRequest) -> HttpResponse:
    return _chat_page(request, None)


@member_required
@require_GET
def chat_detail(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    return _chat_page(request, _conversation_or_404(request, conversation_id))


@member_required
@require_POST
def chat_start(request: HttpRequest) -> JsonResponse:
    """Create an empty conversation with a persona and model (the first send then goes to it)."""
    organization = request.membership.organization
    if organization.is_suspended:
        exc = OrganizationSuspended.of(organization)
        return JsonResponse({"code": exc.code, "message": exc.message}, status=exc.http_status)
    form = ConversationStartForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"code": "invalid_input", "message": "Pick a model and a persona."}, status=400)
    model = form.cleaned_data["model"] or None
    if model and model not in {m.alias for m in models_for_member(request.membership)}:
        return JsonResponse({"code": "model_not_allowed", "message": "This model is not available."}, status=400)
    try:
        conversation = services.conversation_create(
            membership=request.membership, model=model, persona_id=form.cleaned_data["persona"]
        )
    except ParleyError as exc:
        return JsonResponse({"code": exc.code, "message": exc.message}, status=exc.http_status)
    return JsonResponse({"id": str(conversation.id), "model": conversation.model}, status=201)


def message_payload(message: Message) -> dict:
    """A message as chat.js shows it (HTML rendered here, the same as the page's history)."""
    error = {"code": message.error_code, "message": message.error_message} if message.error_code else None
    return {
        "id": str(message.id),
        "role": message.role,
        "status": message.status,
        "model": message.model,
        "content": message.content,
        "html": render_markdown(message.content),
        "seq": message.last_seq,
        "usage": {
            "input_tokens": message.input_tokens,
            "output_tokens": message.output_tokens,
            "cost": cost_str(message.cost),
        },
        "error": error,
        "conversation_title": message.conversation.title,
    }


@member_required
@require_GET
def message_detail(request: HttpRequest, conversation_id: UUID, message_id: UUID) -> JsonResponse:
    try:
        message = message_get_for_member(membership=request.membership, message_id=message_id)
    except NotFound:
        raise Http404("Message not found.") from None
    if message.conversation_id != conversation_id:
        raise Http404("Message not found.")
    return JsonResponse(message_payload(message))


# --- personas ---------------------------------------------------------------------------------


@member_required
@require_http_methods(["GET", "POST"])
def persona_list(request: HttpRequest) -> HttpResponse:
    _admin_only(request)
    form = PersonaForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.persona_create(membership=request.membership, **form.cleaned_data)
        except InvalidInput as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Persona “{form.cleaned_data['name']}” created.")
            return redirect("conversations:personas")
    personas = personas_for_organization(organization=request.membership.organization)
    return render(request, "conversations/personas.html", {"personas": personas, "form": form})


@member_required
@require_http_methods(["GET", "POST"])
def persona_edit(request: HttpRequest, persona_id: UUID) -> HttpResponse:
    _admin_only(request)
    try:
        persona = persona_get_for_member(membership=request.membership, persona_id=persona_id)
    except NotFound:
        raise Http404("Persona not found.") from None
    form = PersonaForm(request.POST or None, initial={"name": persona.name, "system_prompt": persona.system_prompt})
    if request.method == "POST" and form.is_valid():
        try:
            services.persona_update(membership=request.membership, persona_id=persona.id, **form.cleaned_data)
        except InvalidInput as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, "Persona saved.")
            return redirect("conversations:personas")
    return render(request, "conversations/persona_form.html", {"persona": persona, "form": form})


@member_required
@require_POST
def persona_delete(request: HttpRequest, persona_id: UUID) -> HttpResponse:
    _admin_only(request)
    try:
        services.persona_delete(membership=request.membership, persona_id=persona_id)
    except NotFound:
        raise Http404("Persona not found.") from None
    messages.success(request, "Persona deleted.")
    return redirect("conversations:personas")
