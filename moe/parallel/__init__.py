"""Training beyond one process: the ``parallel`` config node (config.py), expert parallelism
(expert_parallel.py: experts split over ranks, tokens exchanged by all-to-all), and the unsharded views
of a sharded model that checkpoints use (sharding.py). Data parallelism itself is DDP through accelerate
(moe/trainer.py)."""
