"""Runs an absl `main` so that user errors end in one clear line, not a traceback."""
import sys

from absl import app
from absl import flags
from absl import logging

from tf_tinyse.errors import UserError


def run(main):
  """`app.run(main)`, printing `error: ...` and exiting 2 on a UserError.

  With --verbosity=1 (or higher) the traceback is printed as well.
  """

  def guarded_main(argv):
    try:
      return main(argv)
    except UserError as e:
      if flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1:
        logging.exception("user error")
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(guarded_main)
