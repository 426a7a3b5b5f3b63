"""The driver's view of a run: the Tune callback (tracker.py: RunTracker, RunStopper, SearchGate), each trial's
record (recorder.py), the progress lines (progress.py) and the per-trial timeout (watchdog.py)."""
