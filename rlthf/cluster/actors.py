"""Ray Data actor pools: a callable class that loads its model once per actor, mapped over a dataset."""
from __future__ import annotations


def map_on_actor_pool(ds, actor_class, kwargs: dict, pool):
    """``ds.map_batches(actor_class(**kwargs))`` on ``pool.num_actors`` actors of ``pool.cpus_per_actor`` CPUs and
    ``pool.gpus_per_actor`` GPUs, ``pool.batch_size`` rows a batch (numpy batches); returns the lazy dataset."""
    import ray
    import ray.data

    return ds.map_batches(
        actor_class,
        fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=pool.num_actors),
        num_cpus=actor_cpus(pool.num_actors, pool.cpus_per_actor, ray.cluster_resources().get("CPU", 0.0)),
        num_gpus=pool.gpus_per_actor or None,
        batch_size=pool.batch_size,
        batch_format="numpy",
    )


def actor_cpus(num_actors: int, cpus_per_actor: float, cluster_cpus: float) -> float:
    """The CPUs Ray reserves for each actor of a pool: ``cpus_per_actor``, less where the pool would hold every
    CPU of the cluster, which starves the read and map tasks that feed it and hangs the pipeline (ray#44687: a
    2-CPU machine, one judge actor of 2 CPUs). One CPU then stays free; the actors still run
    ``cpus_per_actor`` threads, only Ray's bookkeeping changes.

    >>> actor_cpus(1, 2, 2.0), actor_cpus(2, 1, 2.0), actor_cpus(1, 2, 16.0), actor_cpus(1, 1, 1.0)
    (1.0, 0.5, 2, 1)
    """
    if cluster_cpus <= 1 or num_actors * cpus_per_actor < cluster_cpus:
        return cpus_per_actor
    return min(cpus_per_actor, (cluster_cpus - 1) / num_actors)


def frame_on_actor_pool(df, actor_class, kwargs: dict, pool):
    """:func:`map_on_actor_pool` over a pandas frame, collected back into a frame."""
    import ray.data

    return map_on_actor_pool(ray.data.from_pandas(df.reset_index(drop=True)), actor_class, kwargs, pool).to_pandas()


def join_partitions(rows: int) -> int:
    """Partitions of a Ray Data hash join over ``rows`` rows: one per 100,000, at least two."""
    return max(2, -(-rows // 100_000))
