"""Run-time plumbing shared by the stages: loggers, trainers, job state, failure isolation."""
