"""`python -m zoo`: the `zoo` command.

`python -m` puts the working directory first on sys.path, so a `zoo_var.py` in the
directory one runs from (say an export directory: `python -m zoo run .`) would be
imported in place of the installed plugin. Drop it before anything else is imported
(what `python -m` imported to get here, zoo's own package, is beyond reach: `python -P`
or the `zoo` command avoid that).
"""

import os
import sys

# "" is the working directory too (an empty PYTHONPATH entry, as in "PYTHONPATH=/x:").
sys.path[:] = [entry for entry in sys.path if entry not in ("", os.getcwd())]

from zoo.cli import main  # noqa: E402  (after the sys.path fix on purpose)

main()
