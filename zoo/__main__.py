"""`python -m zoo`: the `zoo` command.

`python -m` puts the working directory first on sys.path, so a `zoo_var.py` in the
directory one runs from (say an export directory: `python -m zoo run .`) would be
imported in place of the installed plugin. Drop it before anything else is imported
(what `python -m` imported to get here, zoo's own package, is beyond reach: `python -P`
or the `zoo` command avoid that).
"""

import os
import sys

# The implicit first entry goes; so does "", the working directory named by an empty
# PYTHONPATH entry (as in "PYTHONPATH=/x:"). A directory named on purpose stays.
if sys.path and sys.path[0] == os.getcwd():
    del sys.path[0]
sys.path[:] = [entry for entry in sys.path if entry != ""]

from zoo.cli import main  # noqa: E402  (after the sys.path fix on purpose)

main()
