"""Chaos harness: kill -9 every Lifeline process and server under `lifeline up` while python-hl7 peers drive a
steady stream, and prove that nothing ACKed is lost and ordered lanes keep their order (`python -m bench.chaos`)."""
