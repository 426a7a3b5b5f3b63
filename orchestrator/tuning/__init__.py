"""search/'s "what to try" as Ray Tune and HyperOpt objects: searchers and schedulers (tune_search.py), the
deterministic TPE (tpe.py), and fast-forwarding a resumed search over what a killed run finished
(fast_forward.py)."""
