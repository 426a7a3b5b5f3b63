"""The driver's run: plan() and the Tune run (runner.py), `hpo resume` (resume.py), `hpo reproduce` (reproduce.py)
and the lease that keeps one driver per run (lease.py). It composes the packages below it: tuning/ (what to try,
as Tune objects), launch/ (how a trial runs), tracking/ (what the driver records), budget/ (what it may spend)
and ray_support/ (Ray itself)."""
