# The two commands of the README. Each does all set-up first (scripts/bootstrap).
.PHONY: up test lint bench bootstrap

bootstrap:
	@scripts/bootstrap

up: bootstrap
	.venv/bin/flowscope up $(ARGS)

test: bootstrap
	@scripts/test

lint: bootstrap
	.venv/bin/ruff check services tests bench scripts
	.venv/bin/ruff format --check services tests bench scripts

bench: bootstrap
	@for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
