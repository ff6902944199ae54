from django.core.management.base import BaseCommand

from conversations.recovery import turns_recover
from conversations.turns import STALE_STREAMING_SECONDS, messages_mark_interrupted


class Command(BaseCommand):
    help = (
        "End answers left `streaming` by a process that died (status `interrupted`). By default only "
        "answers not saved for a while (live generations save every few seconds), so it is safe while "
        "other processes run; --all ends every streaming answer (single-process start-up)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--all", action="store_true", help="every streaming answer (no other process runs)")
        parser.add_argument("--stale-seconds", type=float, default=STALE_STREAMING_SECONDS)

    def handle(self, *args, **options) -> None:
        # Turns are billed from their usage records first (conversations.recovery), then ended.
        recovered = turns_recover(older_than=0 if options["all"] else None)
        if recovered:
            self.stdout.write(f"{recovered} turn(s) of a stopped process billed from their usage records.")
        count = messages_mark_interrupted(older_than_seconds=None if options["all"] else options["stale_seconds"])
        self.stdout.write(f"{count} interrupted answer(s) marked.")
