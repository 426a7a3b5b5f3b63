"""`hpo submit`, `hpo status`, `hpo logs`, `hpo stop`: the client of Ray's Jobs API (jobs.py)."""
