"""Helper of bench/ws_stream.py, run in its own process with Django set up.

    ws_setup.py prepare --conversations K       → JSON: API key secret, conversations with 0/100/1000 messages
    ws_setup.py direct --runs N --delay D       → JSON: time to first token of the demo provider called directly
    ws_setup.py stats                           → JSON: what the benchmark's answers left in the database
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from decimal import Decimal  # noqa: E402

from accounts.models import Tier, User  # noqa: E402
from accounts.services import api_key_create, organization_create  # noqa: E402
from conversations.models import Conversation, Message, Role, Status  # noqa: E402

BENCH_EMAIL = "bench@parley.invalid"


def prepare(conversations: int, orgs: int) -> dict:
    tier = Tier.objects.get(slug="enterprise")
    # The benchmark measures streaming, not the limits: lift them on the bench database's tier.
    tier.requests_per_minute = 1_000_000
    tier.tokens_per_minute = 1_000_000_000
    tier.monthly_budget_usd = Decimal("1000000")
    tier.max_output_tokens = 32_000
    tier.save()
    user = User.objects.filter(email=BENCH_EMAIL).first() or User.objects.create_user(email=BENCH_EMAIL, password=None)
    secrets, organizations = [], []
    for _ in range(orgs):  # load spreads over several tenants, as on a real multi-tenant server
        organizations.append(organization_create(name=f"Bench {uuid.uuid4().hex[:6]}", owner=user, tier=tier))
        membership = organizations[-1].memberships.get(user=user)
        secrets.append(api_key_create(membership=membership, name="bench")[1])
    secret, organization = secrets[0], organizations[0]
    histories: dict[str, list[str]] = {}
    for size in (0, 100, 1000):
        ids = []
        for _ in range(conversations):
            conversation = Conversation.objects.create(
                organization=organization, owner=user, model="demo", title=f"history {size}", message_count=size
            )
            Message.objects.bulk_create(
                [
                    Message(
                        conversation=conversation,
                        organization=organization,
                        position=i,
                        role=Role.USER if i % 2 else Role.ASSISTANT,
                        content=f"Message {i}: some earlier text of this conversation, a sentence or two long.",
                        token_count=18,
                        status=Status.COMPLETE,
                    )
                    for i in range(1, size + 1)
                ],
                batch_size=1000,
            )
            ids.append(str(conversation.id))
        histories[str(size)] = ids
    return {"secret": secret, "secrets": secrets, "organization": str(organization.id), "histories": histories}


def direct(runs: int, delay: float, prompt: str) -> dict:
    """Time to first token of the demo provider itself (no Parley around it)."""
    from django.conf import settings

    from llm.providers.demo import DemoProvider
    from llm.registry import model_get
    from llm.types import ChatRequest, TextDelta
    from llm.types import Message as LLMMessage

    settings.PARLEY_DEMO_TOKEN_DELAY = delay
    info = model_get("demo")
    provider = DemoProvider()

    async def one() -> float:
        request = ChatRequest(
            model="demo", messages=(LLMMessage(role="user", content=prompt),), request_id=uuid.uuid4().hex
        )
        started = time.perf_counter()
        stream = provider.stream(request, info)
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    return time.perf_counter() - started
        finally:
            await stream.aclose()
        return float("nan")

    async def all_runs() -> list[float]:
        for _ in range(5):  # warm up: imports, the tokenizer
            await one()
        return [await one() for _ in range(runs)]

    return {"ttft": asyncio.run(all_runs())}


def stats(organization: str) -> dict:
    answers = Message.objects.filter(organization_id=organization, role=Role.ASSISTANT)
    return {
        "answers": answers.count(),
        "by_status": {s: answers.filter(status=s).count() for s in Status.values if answers.filter(status=s).exists()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--conversations", type=int, default=10)
    p.add_argument("--orgs", type=int, default=10)
    d = sub.add_parser("direct")
    d.add_argument("--runs", type=int, default=50)
    d.add_argument("--delay", type=float, default=0.05)
    d.add_argument("--prompt", default="Hello there")
    s = sub.add_parser("stats")
    s.add_argument("--organization", required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        result = prepare(args.conversations, args.orgs)
    elif args.command == "direct":
        result = direct(args.runs, args.delay, args.prompt)
    else:
        result = stats(args.organization)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
