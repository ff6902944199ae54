.PHONY: run test lint bench

run:  ## Parley on the embedded default at http://127.0.0.1:$${PORT:-8000}
	@bash scripts/run.sh

test:  ## the whole suite against private PostgreSQL and Redis (`make test -- tests/llm -x` runs a part)
	@bash scripts/test.sh $(filter-out test,$(MAKECMDGOALS))

lint:
	@bash scripts/bootstrap.sh
	.venv/bin/ruff check .
	.venv/bin/lint-imports --no-cache
	.venv/bin/python manage.py makemigrations --check --dry-run

# `make test -- ARGS`: the words after `test` are pytest's arguments, not targets.
ifeq (test,$(firstword $(MAKECMDGOALS)))
%:
	@:
endif
