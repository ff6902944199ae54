"""What must hold after every fault, read from the suite's PostgreSQL and the fake provider's records.

`settled(cluster, tenant)` waits (at most a minute and a little) until the tenant has no answer in
`streaming`/`pending` and no open reservation; `audit(...)` then compares, turn by turn, the three
records of an answer — the fake provider's (what the vendor bills), Parley's ledger, and the message
and call log — and returns what disagrees.

The margins (see tests/faults/README.md):

- every answer's reservation is at least what it was billed (an upper bound);
- an answer that ended normally is billed exactly what the vendor reported (input and output);
- an answer whose usage Parley had to estimate (its process was killed; the provider's stream was
  cut, so no usage came) is billed from the text saved and the prompt it reserved for: output at
  most LAG_TOKENS below what the vendor generated (usage is recorded about once a second; the
  fake writes a delta every DELTA_DELAY), and never above it; input at least the vendor's count
  (the reservation is an upper bound) and at most ESTIMATE_INPUT_RATIO times it plus
  ESTIMATE_INPUT_SLACK tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal

from tests.fakeprovider import FakeProviderServer

from .clients import DELTA_DELAY, Turn, fake_requests
from .harness import Cluster, Tenant, wait_for

TERMINAL = ("complete", "failed", "cancelled", "interrupted")
SETTLE_SECONDS = 75.0  # "within a minute" of the fault, plus the time a check takes
LAG_SECONDS = 1.5  # usage recorded about once a second (PARLEY_USAGE_RECORD_SECONDS=1.0), plus write buffers
LAG_TOKENS = math.ceil(LAG_SECONDS / DELTA_DELAY)
ESTIMATE_INPUT_RATIO = 2.0
ESTIMATE_INPUT_SLACK = 32
CENT_FRACTION = Decimal("0.00000001")  # Message.cost keeps 8 decimal places


def count_tokens(text: str) -> int:
    from llm.tokens import encoding

    return len(encoding("o200k_base").encode(text, disallowed_special=())) if text else 0


def unfinished(cluster: Cluster, tenant: Tenant) -> tuple[list[tuple], list[tuple]]:
    """(answers not in a terminal state, open reservations) of the tenant."""
    messages = cluster.sql(
        "SELECT id, status, updated_at FROM conversations_message WHERE organization_id = %s AND role = 'assistant' "
        "AND status NOT IN ('complete', 'failed', 'cancelled', 'interrupted')", [tenant.organization_id])
    reservations = cluster.sql(
        "SELECT request_id, created_at FROM billing_reservation WHERE organization_id = %s AND status = 'open'",
        [tenant.organization_id])
    return messages, reservations


def settled(cluster: Cluster, tenant: Tenant, *, timeout: float = SETTLE_SECONDS) -> float:
    """Wait until every answer of the tenant is terminal and no reservation is open; the seconds it took."""
    started = _now()
    try:
        wait_for(lambda: unfinished(cluster, tenant) == ([], []), timeout=timeout, interval=0.5,
                 what="every answer terminal and no reservation open")
    except AssertionError:
        messages, reservations = unfinished(cluster, tenant)
        raise AssertionError(
            f"after {timeout:.0f} s: {len(messages)} answer(s) not terminal {messages[:5]}, "
            f"{len(reservations)} reservation(s) still open {reservations[:5]}"
        ) from None
    return _now() - started


def _now() -> float:
    import time

    return time.monotonic()


def ledger(cluster: Cluster, turn_id: str) -> list[tuple]:
    return cluster.sql(
        "SELECT request_id, input_tokens + cached_input_tokens, output_tokens, cost, estimated "
        "FROM billing_ledgerentry WHERE turn_request_id = %s", [turn_id])


def audit(cluster: Cluster, tenant: Tenant, fake: FakeProviderServer, turns: Iterable[Turn]) -> list[str]:
    """Everything that disagrees between the vendor's books, Parley's ledger, the message and the call log."""
    problems: list[str] = []
    turns = list(turns)
    for turn in turns:
        problems.extend(f"{turn.describe()}: {p}" for p in _audit_turn(cluster, fake, turn))
    # Nothing billed twice, nothing of the tenant billed outside a known turn.
    known = {t.turn_id for t in turns if t.turn_id}
    rows = cluster.sql(
        "SELECT turn_request_id, count(*), count(DISTINCT request_id) FROM billing_ledgerentry "
        "WHERE organization_id = %s GROUP BY turn_request_id", [tenant.organization_id])
    for turn_request_id, count, distinct in rows:
        if count != distinct:
            problems.append(f"turn {turn_request_id}: {count} ledger rows for {distinct} calls")
    # Answers the vendor generated for this tenant's turns but whose client never learned an id.
    for turn in turns:
        if turn.turn_id is None:
            billed = sum(r.billed[1] for r in fake_requests(fake, turn.tag))
            if billed:
                problems.append(f"{turn.describe()}: the vendor generated {billed} tokens, but the client never got "
                                "the turn's id (cannot check its bill)")
    stray = sorted(r[0] for r in rows if r[0] not in known and not str(r[0]).startswith(("title-", "summary-")))
    if stray:
        problems.append(f"ledger rows of turns no client started: {stray[:5]}")
    return problems


def _audit_turn(cluster: Cluster, fake: FakeProviderServer, turn: Turn) -> list[str]:
    problems: list[str] = []
    requests = fake_requests(fake, turn.tag)
    vendor_in = sum(r.billed[0] for r in requests)
    vendor_out = sum(r.billed[1] for r in requests)
    generated = vendor_in > 0 or vendor_out > 0
    if turn.turn_id is None:
        return problems
    rows = ledger(cluster, turn.turn_id)
    if not generated and not turn.saw_text:
        if any(r[2] for r in rows):
            problems.append(f"billed {sum(r[2] for r in rows)} output tokens the vendor never generated")
        return problems
    if not rows:
        return [f"no ledger row (the vendor billed {vendor_in} in / {vendor_out} out; the client saw "
                f"{count_tokens(turn.text)} tokens)"]
    billed_in = sum(r[1] for r in rows)
    billed_out = sum(r[2] for r in rows)
    cost = sum((r[3] for r in rows), Decimal(0))
    estimated = any(r[4] for r in rows)
    seen = count_tokens(turn.text)
    if not estimated:
        if (billed_in, billed_out) != (vendor_in, vendor_out):
            problems.append(f"ledger {billed_in} in / {billed_out} out, the vendor billed {vendor_in} / {vendor_out}")
        if billed_out < seen:
            problems.append(f"ledger bills {billed_out} output tokens, the client saw {seen}")
    else:
        if not vendor_out - LAG_TOKENS <= billed_out <= vendor_out:
            problems.append(f"estimated output {billed_out}, the vendor generated {vendor_out} "
                            f"(margin: {LAG_TOKENS} below, none above)")
        if billed_out < seen - LAG_TOKENS:
            problems.append(f"estimated output {billed_out}, the client saw {seen} (margin {LAG_TOKENS})")
        if vendor_in and not vendor_in <= billed_in <= vendor_in * ESTIMATE_INPUT_RATIO + ESTIMATE_INPUT_SLACK:
            problems.append(f"estimated input {billed_in}, the vendor billed {vendor_in} (allowed: "
                            f"{vendor_in} … {vendor_in * ESTIMATE_INPUT_RATIO + ESTIMATE_INPUT_SLACK:.0f})")
    reservation = cluster.sql("SELECT amount, prompt_tokens, max_output_tokens FROM billing_reservation "
                              "WHERE request_id = %s", [turn.turn_id])
    if not reservation:
        problems.append("no reservation")
    elif Decimal(reservation[0][0]) < cost:
        amount, prompt, output = reservation[0]
        problems.append(f"reserved ${amount} ({prompt} prompt + {output} output tokens), billed ${cost} "
                        f"({billed_in} in + {billed_out} out): the reservation is not an upper bound")
    calls = cluster.sql("SELECT count(*), coalesce(sum(output_tokens), 0) FROM llm_providercall WHERE request_id = %s",
                        [turn.turn_id])
    if not calls or calls[0][0] == 0:
        problems.append("no call-log row")
    elif calls[0][1] != billed_out:
        problems.append(f"the call log says {calls[0][1]} output tokens, the ledger {billed_out}")
    if turn.entry == "ws":
        message = cluster.sql("SELECT status, cost, output_tokens, content FROM conversations_message WHERE id = %s",
                              [turn.turn_id])
        if not message:
            problems.append("its message is missing")
        else:
            status, message_cost, message_out, content = message[0]
            if status not in TERMINAL:
                problems.append(f"message left {status}")
            if abs(Decimal(message_cost) - cost) > CENT_FRACTION:
                problems.append(f"message cost {message_cost}, ledger {cost}")
            if message_out != billed_out:
                problems.append(f"message output_tokens {message_out}, ledger {billed_out}")
            if turn.completed and content != turn.text:
                problems.append("the saved content differs from what the client was sent")
            if not (content.startswith(turn.text) or turn.text.startswith(content)):
                problems.append("the saved content and what the client saw disagree (neither is a prefix of the other)")
    return problems


def http_problems(samples) -> list[str]:
    """Answers no client should get: an HTML error page, a 500, a 5xx without a retry hint."""
    problems = []
    for s in samples:
        if s.status is None or s.status < 500:
            continue
        if s.html:
            problems.append(f"{s.what}@{s.process}: {s.status} HTML page")
        elif s.status != 503 or not s.retry_after:
            problems.append(f"{s.what}@{s.process}: {s.status} {s.content_type} retry-after={s.retry_after} {s.body[:120]!r}")
    return sorted(set(problems))
