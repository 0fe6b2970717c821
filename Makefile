# The two commands a new user needs: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rvchat-installed

.PHONY: run test install system-deps provision bench compose-config docker-test clean

run: install ## install what is missing, then start all five services on embedded defaults
	@echo ""
	@echo "  Voice chat page: http://localhost:$${APP_PORT:-3000}  (Ctrl-C stops everything)"
	@echo ""
	$(VENV)/bin/honcho -f Procfile start

test: install system-deps ## install what is missing, then run the whole suite
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): requirements/*.txt pyproject.toml scripts/install.sh
	bash scripts/install.sh
	@touch $@

system-deps: ## Debian packages the tests use (chromium, ffmpeg, sox, docker-compose)
	bash scripts/install.sh --system

provision: install
	$(PY) -m rvchat_common.provision --check

bench: install ## latency and throughput figures into bench/REPORT.md
	$(PY) -m bench

compose-config:
	docker-compose -f docker-compose.yml config -q

docker-test: ## build the five images, run each alone and the composed stack through a voice turn (needs a Docker engine; ~40 min the first time; not part of `make test`)
	bash scripts/docker-e2e.sh $(DOCKER_TEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
