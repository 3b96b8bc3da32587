"""Training: the shared loop and one small module per method."""

from alignkit.train.loop import TrainResult, evaluate, fit
from alignkit.train.method import Method
from alignkit.train.run import METHODS, Prepared, make_config, prepare, run

__all__ = ["METHODS", "Prepared", "prepare", "Method", "TrainResult", "evaluate", "fit", "make_config", "run"]
