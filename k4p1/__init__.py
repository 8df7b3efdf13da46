"""k4p1: model patches for parameter-efficient transfer and multi-task learning (Keras 3).

Data flow: config -> backbones -> patches -> model -> trainer -> export
(experiment.py looks every configured name up; registry.py, errors.py, files.py underpin all).
"""

__version__ = "0.1.0"
