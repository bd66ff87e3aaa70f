"""The loops several stages share: prediction, evaluation and training, and the settings they run with."""
