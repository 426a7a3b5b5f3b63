"""Ray itself, fenced: every private Ray API and patch (ray_compat/, a
module per Ray component), starting, joining and asking Ray
(ray_env.py), and the driver process's session, which changes process state and puts it back (driver.py)."""
