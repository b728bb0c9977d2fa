"""The benchmarks behind ``benchmarks/results/``: one module per capability (``zoo``, ``influence``, ``shift``,
``concepts``, ``steer``, ``align``) plus the world evaluation sets they share (:mod:`mmlens.bench.world_sets`).

Each module's entry point is run by ``mmlens bench NAME``; import the module you need (they load heavy
dependencies)."""
