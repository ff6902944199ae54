"""Run turns from another process against the test database (used by test_concurrency.py).

    python -m tests.billing._turn_worker '<json: memberships, turns, threads, start_at>'

Prints one JSON list of outcome codes ("ok" or an error code).
"""

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402

from accounts.errors import ParleyError  # noqa: E402
from accounts.models import Membership  # noqa: E402
from billing.reservations import turn_authorize  # noqa: E402
from billing.settlement import turn_settle  # noqa: E402
from llm.types import Usage  # noqa: E402


def one_turn(membership_id: str, tag: str) -> str:
    try:
        membership = Membership.objects.select_related("organization__tier", "user").get(pk=membership_id)
        try:
            auth = turn_authorize(
                membership=membership,
                model="test-model",
                prompt_tokens=1000,
                longest_message_chars=10,
                max_output_tokens=1000,
                request_id=tag,
            )
        except ParleyError as error:
            return error.code
        time.sleep(0.005)
        usage = Usage(1000, 1000, call_id=f"{tag}:0", model="test-model", provider="test")
        turn_settle(authorization=auth, usages=[usage], membership=membership)
        return "ok"
    finally:
        connection.close()


def main() -> None:
    args = json.loads(sys.argv[1])
    members = args["memberships"]
    lock = threading.Lock()
    _ = lock
    while time.time() < args.get("start_at", 0):
        time.sleep(0.005)
    with ThreadPoolExecutor(max_workers=args["threads"]) as pool:
        futures = [
            pool.submit(one_turn, members[i % len(members)], f"{args['prefix']}-{i}") for i in range(args["turns"])
        ]
        outcomes = [(members[i % len(members)], f.result()) for i, f in enumerate(futures)]
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
