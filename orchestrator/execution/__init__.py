"""Running a job on Ray: the plan and the Tune run (runner.py), how a trial is launched (launcher.py), the Tune
forms of what search/ describes (tune_search.py, fast_forward.py), the driver's callback (tracking.py with
recorder.py, progress.py, watchdog.py), retries (attempts.py), resume and reproduce, submission to a cluster
(submit.py), the driver process's state (driver.py), Ray itself (ray_env.py) and every private Ray API
(ray_compat.py)."""
