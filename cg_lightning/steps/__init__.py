"""Pipeline steps. Each takes the :class:`JobContext`, reuses finished outputs and writes its own atomically."""
