"""Starting (or joining) Ray for a run."""
from __future__ import annotations

import logging
import os

from rlthf.config import RayConfig

# Ray's Python loggers in the driver. `ray` and `ray.data` print to the console through handlers of their own
# (set up when `ray` and `ray.data` are imported); Ray Train and Ray Tune log below `ray`.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


def route_ray_logs() -> None:
    """Hand the records of Ray's Python loggers to the root logger instead of Ray's console handlers, so that
    rlthf's logging decides where they go: a run keeps them in its log, off the console (:mod:`rlthf.run.logs`).
    Ray's handlers that write to files in its session directory stay."""
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # at INFO it logs every dataset's plan and timing


def init_ray(config: RayConfig) -> None:
    """Start a local Ray (or join ``address``), unless the caller's pipeline already did; either way Ray's
    Python loggers go through the root logger (:func:`route_ray_logs`)."""
    import ray
    import ray.data  # importing ray.data gives its logger a console handler: import it before routing

    route_ray_logs()  # before ray.init, which logs (token authentication, for one)
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    local = {} if address else {"num_cpus": config.num_cpus, "include_dashboard": False}
    ray.init(address=address, logging_level=logging.WARNING, **local)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
