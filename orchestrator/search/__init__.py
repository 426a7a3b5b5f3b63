"""What to try: distributions (one class per kind), search algorithms and schedulers, each listed once.

Nothing here starts Ray or imports it at module level; tuning/tune_search.py turns these into Ray Tune objects.
"""

from orchestrator.search.algorithms import ALGORITHMS, Algorithm
from orchestrator.search.distributions import DISTRIBUTIONS, Distribution
from orchestrator.search.schedulers import SCHEDULERS, Scheduler

__all__ = ["ALGORITHMS", "Algorithm", "DISTRIBUTIONS", "Distribution", "SCHEDULERS", "Scheduler"]
