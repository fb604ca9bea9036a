# Soak (not part of `make test`): 50 mounts through a 5% fault proxy, one writer and one
# reader each, 10 minutes, RSS sampled every second; prints figures, fails on any lost
# write, wrong byte, pending upload, dead server or RSS over its bound. About 12 minutes
# on an idle machine. A short proof: `make soak SOAK_ARGS="--mounts 5 --minutes 1"`.
SOAK_ARGS ?=

.PHONY: soak
soak: install
	$(PY) -m tests.soak $(SOAK_ARGS)
