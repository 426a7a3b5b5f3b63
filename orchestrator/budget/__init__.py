"""What a run may spend and hold: the ledger of trial-hours, CPU/GPU-hours and cost (ledger.py), what the
cluster can hold at all (capacity.py), and retries and the closed budget as trials see them (attempts.py)."""
