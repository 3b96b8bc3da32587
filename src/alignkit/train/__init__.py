"""Training: the shared loop and one small module per method."""
from alignkit.train.loop import Method, TrainResult, evaluate, fit
from alignkit.train.run import METHODS, make_config, run

__all__ = ["METHODS", "Method", "TrainResult", "evaluate", "fit", "make_config", "run"]
