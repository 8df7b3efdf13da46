"""Training: the trainer (phases), its step, strategies and optimizers by name.

Nothing here imports the deployment modules: exporting is the experiment's job.
"""
