"""Error types for input that is wrong before any compute starts.

Entry points catch these and print their message as one line (exit status 2), so a message
must say what is wrong and how to fix it, in one sentence.
"""


class ConfigError(ValueError):
    """An inconsistent or invalid configuration value."""


class DataError(ValueError):
    """A dataset that is missing, empty or malformed."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, partial or from a different configuration."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""
