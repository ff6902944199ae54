"""The seed price table in billing/data/prices.json, loaded by a migration and a management command."""

import json
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

PRICES_FILE = Path(__file__).resolve().parent / "data" / "prices.json"


def read_prices(path: Path = PRICES_FILE) -> list[dict]:
    """Rows as Price field values (adds nothing to the database)."""
    data = json.loads(path.read_text())
    source_date = date.fromisoformat(data["source_date"])
    default_effective = datetime.fromisoformat(data["effective_at"].replace("Z", "+00:00"))
    rows = []
    for item in data["prices"]:
        effective = item.get("effective_at")
        rows.append(
            {
                "model": item["model"],
                "effective_at": datetime.fromisoformat(effective.replace("Z", "+00:00")) if effective else default_effective,
                "input_per_mtok": Decimal(item["input"]),
                "output_per_mtok": Decimal(item["output"]),
                "cached_input_per_mtok": Decimal(item["cached_input"]) if item.get("cached_input") else None,
                "is_free": False,
                "source": item.get("source", ""),
                "source_date": source_date,
            }
        )
    for item in data.get("free", []):
        rows.append(
            {
                "model": item["model"],
                "effective_at": default_effective,
                "input_per_mtok": Decimal(0),
                "output_per_mtok": Decimal(0),
                "cached_input_per_mtok": None,
                "is_free": True,
                "source": item.get("source", ""),
                "source_date": source_date,
            }
        )
    return rows


def load_prices(price_model, path: Path = PRICES_FILE) -> int:
    """Insert the file's rows that are not there yet (same model and effective date). Returns how many."""
    added = 0
    for row in read_prices(path):
        _, created = price_model.objects.get_or_create(
            model=row["model"], effective_at=row["effective_at"], defaults=row
        )
        added += int(created)
    return added
