"""50 and 200 concurrent turns — websocket and `/v1`, spread over both Daphne processes — against a
budget that fits exactly 10 of them, with prompts the vendor bills as more tokens than Parley's
tiktoken count (the fake provider's vendor count, tests/fakeprovider/usage.py): overshoot 0.

"Fits exactly 10": every turn asks for the same prompt length and is cut at the same output cap
(BUDGET_OUTPUT_TOKENS, the tier's and the request's), so each admitted turn costs the same C — its
vendor-counted prompt and the cap at the model's price. The budget is the largest amount a
`Budget` row can hold (4 decimal places) below 11·C, so 10 turns fit and an 11th cannot; a
reservation one token short of what the vendor bills lets the 11th in.
"""

from __future__ import annotations

import asyncio
from decimal import ROUND_FLOOR, Decimal

import pytest

from llm.tokens import count_text

from .books import audit, settled
from .clients import Turn, fake_requests, v1_turn, ws_turn
from .harness import BUDGET_OUTPUT_TOKENS, MODELS, Cluster, Tenant

pytestmark = pytest.mark.faults

FITS = 10
# Accented and CJK text: tiktoken counts far fewer tokens than these vendors' UTF-8 bytes / 2.
FILLER = "Grüße aus Köln — 東京は今日も晴れです。¿Qué tal, señora Müller? Ça va très bien, merci! " * 3
RUNS = [(50, "anthropic"), (200, "anthropic"), (50, "gemini"), (200, "gemini"), (50, "openai"), (200, "openai")]


def price(cluster: Cluster, alias: str) -> tuple[Decimal, Decimal]:
    (inp, out, free), = cluster.sql(
        "SELECT input_per_mtok, output_per_mtok, is_free FROM billing_price WHERE model = %s AND effective_at <= now() "
        "ORDER BY effective_at DESC LIMIT 1", [alias])
    return (Decimal(0), Decimal(0)) if free else (Decimal(inp), Decimal(out))


def turn(cluster: Cluster, tenant: Tenant, n: int, model: str) -> asyncio.Task:
    """The n-th turn of a run: websocket and /v1 in turn, on the processes in turn."""
    index = (n // 2) % len(cluster.daphnes)
    daphne = cluster.daphnes[index]
    if n % 2 == 0:
        coroutine = ws_turn(daphne.ws_url, tenant.secret, process=index, model=model, kind="LONG", filler=FILLER,
                            deadline=180)
    else:
        coroutine = v1_turn(daphne.url, tenant.secret, process=index, model=model, kind="LONG", filler=FILLER,
                            max_tokens=BUDGET_OUTPUT_TOKENS, deadline=180)
    return asyncio.ensure_future(coroutine)


@pytest.fixture(scope="module")
def budgets(cluster: Cluster, tenants) -> dict[tuple[int, str], tuple[Tenant, Decimal, Decimal]]:
    """Per run: a fresh organization whose budget fits exactly FITS turns, that budget, and C.

    C is measured: one websocket and one /v1 turn per model on a budget-tier organization without a
    budget, billed by the fake provider's vendor count (both must be billed the same prompt)."""
    calibration, = cluster.seed(name="calibration-budget", budgets=[None], tier="faults-budget")

    async def measure() -> list[Turn]:
        return await asyncio.gather(*(turn(cluster, calibration, n, MODELS[vendor])
                                      for vendor in MODELS for n in (0, 1)))

    measured = asyncio.run(measure())
    cost: dict[str, Decimal] = {}
    for vendor, alias in MODELS.items():
        pair = [t for t in measured if t.model == alias]
        assert all(t.completed for t in pair), [t.describe() for t in pair]
        billed = {fake_requests(cluster.fake, t.tag)[0].billed for t in pair}
        assert len(billed) == 1, f"{alias}: the websocket and /v1 turns were billed differently: {billed}"
        (vendor_in, vendor_out), = billed
        assert vendor_out == BUDGET_OUTPUT_TOKENS
        naive = count_text(pair[0].prompt)  # what tiktoken says of the text alone
        formatted = naive + 4 + 3  # Parley's chat count (4 per message, 3 priming)
        if vendor != "openai":  # the point of the test: the vendor bills more than tiktoken counts
            assert vendor_in > formatted, f"{alias}: vendor {vendor_in} tokens, tiktoken {formatted}"
        p_in, p_out = price(cluster, alias)
        cost[alias] = (vendor_in * p_in + vendor_out * p_out) / Decimal(1_000_000)
    plans = {}
    for n, vendor in RUNS:
        c = cost[MODELS[vendor]]
        limit = ((FITS + 1) * c).quantize(Decimal("0.0001"), rounding=ROUND_FLOOR)
        if limit == (FITS + 1) * c:
            limit -= Decimal("0.0001")
        assert FITS * c <= limit < (FITS + 1) * c
        plans[(n, vendor)] = (limit, c)
    seeded = cluster.seed(name="budget", budgets=[str(limit) for limit, _ in plans.values()], tier="faults-budget")
    return {key: (tenant, *plans[key]) for key, tenant in zip(plans, seeded, strict=True)}


@pytest.mark.parametrize(("concurrent", "vendor"), RUNS, ids=[f"{n}-{v}" for n, v in RUNS])
async def test_concurrent_turns_never_overshoot_the_budget(cluster, budgets, concurrent, vendor):
    tenant, limit, each = budgets[(concurrent, vendor)]
    model = MODELS[vendor]
    turns = await asyncio.gather(*(turn(cluster, tenant, n, model) for n in range(concurrent)))
    problems = []
    for t in turns:
        refused = t.status == "refused" and t.error == "budget_exceeded" and (t.http_status in (None, 429))
        if not (t.completed or refused):
            problems.append(f"neither answered nor refused for the budget: {t.describe()}")
    try:
        settled(cluster, tenant)
    except AssertionError as exc:
        problems.append(str(exc))
    spent_ledger = sum((row[0] for row in cluster.sql(
        "SELECT cost FROM billing_ledgerentry WHERE organization_id = %s", [tenant.organization_id])), Decimal(0))
    # What the counter holds must be exactly the reservations still open, read in one statement: a
    # title the conversation asked for afterwards (a Celery task) may hold one by now.
    counters = cluster.sql(
        "SELECT spent, reserved - COALESCE((SELECT SUM(amount) FROM billing_reservation r WHERE "
        "r.org_counter_id = p.id AND r.status = 'open'), 0) FROM billing_periodspend p "
        "WHERE organization_id = %s AND membership_id IS NULL", [tenant.organization_id])
    admitted = {row[0] for row in cluster.sql(
        "SELECT DISTINCT turn_request_id FROM billing_ledgerentry WHERE organization_id = %s "
        "AND turn_request_id NOT LIKE 'title-%%'", [tenant.organization_id])}
    answered = [t for t in turns if t.completed]
    if spent_ledger > limit:
        problems.append(f"overshoot: the ledger bills ${spent_ledger} against a budget of ${limit} "
                        f"({(spent_ledger - limit) / limit:.1%} over; one turn costs ${each})")
    for spent, reserved in counters:
        if Decimal(spent) > limit:
            problems.append(f"overshoot: the period's spend is ${spent} against ${limit}")
        if Decimal(reserved) != 0:
            problems.append(f"${reserved} still reserved after every turn ended (beyond open reservations)")
    if len(admitted) > FITS:
        problems.append(f"{len(admitted)} turns billed; the budget fits {FITS}")
    if not answered:
        problems.append(f"no turn was answered, though the budget fits {FITS}")
    problems += audit(cluster, tenant, cluster.fake, turns)
    assert not problems, (f"{concurrent} concurrent {model} turns, budget ${limit} (fits {FITS} at ${each}), "
                          f"{len(answered)} answered ({sum(t.entry == 'ws' for t in answered)} websocket, "
                          f"{sum(t.entry == 'v1' for t in answered)} /v1):\n" + "\n".join(f"- {p}" for p in problems))


def test_the_vendor_count_exceeds_parley_s_naive_count():
    """The premise, on the prompt alone: the fake's Anthropic/Gemini count beats tiktoken's."""
    from tests.fakeprovider import vendor_input_tokens

    content = f"[t-{'7' * 39}] LONG Please answer. {FILLER}"
    naive = count_text(content) + 4 + 3
    body_anthropic = {"messages": [{"role": "user", "content": content}], "max_tokens": 32}
    body_gemini = {"contents": [{"role": "user", "parts": [{"text": content}]}]}
    assert vendor_input_tokens("anthropic", body_anthropic) > 1.3 * naive
    assert vendor_input_tokens("gemini", body_gemini) > 1.3 * naive
    assert vendor_input_tokens("openai", {"messages": [{"role": "user", "content": content}]}) == naive
