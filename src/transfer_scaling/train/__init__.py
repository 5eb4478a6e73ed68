"""Training: the model, the trainer spec and schedule, the DeepSpeed engine, the run loop, its checkpoints, and the
launcher that starts it on every process of a job. The only stage that needs torch and DeepSpeed to run.

Deliberately empty: importing a module here imports what that module needs, nothing more.
"""
