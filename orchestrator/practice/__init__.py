"""What careful practitioners do around a search: sanity checks before it (sanity.py), ensembles of its best
trials (ensemble.py), the Tuning Playbook's plots and warnings after it (analyze.py, plots.py)."""
