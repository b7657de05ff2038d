"""The main file for spark-submit: `spark-submit --py-files megascience_pyfiles.zip megascience_submit.py run ...`.

spark-submit runs a file, not a module inside the zip; `make package` copies this file to dist/megascience_submit.py.
"""

import sys

from megascience.jobs.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
