"""Fault-injection scorecard: inject each fault into a whole in-process Lifeline (real PostgreSQL, Temporal dev
server, worker, monitor, API) with real MLLP peers and the engine emulators, and measure how it heals
(`python -m bench.healing`)."""
