"""The base class of the errors a user fixes (a config field, a flag, a path, a prepared file).

Their message is the whole story, in one line naming the thing and the fix, so an experiment's
``__main__`` (:func:`attention_jax.training.run_experiment`) prints it without a traceback
(``--traceback`` or ``ATTENTION_JAX_TRACEBACK=1`` shows it). Errors of any other class are bugs
and keep their traceback.
"""


class UserError(Exception):
  """A mistake or a damaged file outside the code: the message names it and the fix."""


class ConfigError(UserError, ValueError):
  """A config field, flag or path that cannot work, found before anything is prepared."""


class DamagedFileError(UserError, ValueError):
  """A file of a run or a dataset that cannot be read back: the message names it and the fix."""
