.PHONY: run test

# Set up and run sharqd against a local redis-server (see README).
run:
	./scripts/run-server.sh

# Set up and run the full test suite (see README).
test:
	./scripts/run-tests.sh
