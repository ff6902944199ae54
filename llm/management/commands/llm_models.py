from django.core.management.base import BaseCommand

from llm.registry import models_all


class Command(BaseCommand):
    help = "List the model aliases, their providers, and whether each is configured (has a key)."

    def handle(self, *args, **options) -> None:
        infos = models_all()
        width = max([len(i.alias) for i in infos] + [5])
        self.stdout.write(f"{'ALIAS':<{width}}  {'PROVIDER':<18} {'VENDOR MODEL':<24} {'CONTEXT':>9} {'OUTPUT':>7} "
                          f"TOOLS  STATUS")
        for info in infos:
            status = self.style.SUCCESS("available") if info.available else self.style.WARNING("no key configured")
            self.stdout.write(
                f"{info.alias:<{width}}  {info.provider:<18} {info.vendor_model:<24} {info.context_window:>9} "
                f"{info.max_output_tokens:>7} {'yes' if info.supports_tools else 'no':<6} {status}"
            )
