"""Ray Data actor pools: a callable class that loads its model once per actor, mapped over a dataset."""
from __future__ import annotations


def map_on_actor_pool(ds, actor_class, kwargs: dict, pool):
    """``ds.map_batches(actor_class(**kwargs))`` on ``pool.num_actors`` actors of ``pool.cpus_per_actor`` CPUs and
    ``pool.gpus_per_actor`` GPUs, ``pool.batch_size`` rows a batch (numpy batches); returns the lazy dataset."""
    import ray.data

    return ds.map_batches(
        actor_class,
        fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=pool.num_actors),
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor or None,
        batch_size=pool.batch_size,
        batch_format="numpy",
    )


def frame_on_actor_pool(df, actor_class, kwargs: dict, pool):
    """:func:`map_on_actor_pool` over a pandas frame, collected back into a frame."""
    import ray.data

    return map_on_actor_pool(ray.data.from_pandas(df.reset_index(drop=True)), actor_class, kwargs, pool).to_pandas()


def join_partitions(rows: int) -> int:
    """Partitions of a Ray Data hash join over ``rows`` rows: one per 100,000, at least two."""
    return max(2, -(-rows // 100_000))
