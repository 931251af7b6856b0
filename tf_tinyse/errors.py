"""The one exception type whose message is meant for the user, not the developer."""


class UserError(Exception):
  """Bad input the user can fix: a missing folder, corrupt audio, a bad flag value.

  The message is one line that names the file or flag, says what was wrong and
  what to do. CLIs print it as `error: <message>` and exit with status 2,
  without a traceback (unless --verbosity=1).
  """
