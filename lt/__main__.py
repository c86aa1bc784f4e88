"""``python -m lt`` runs the ``lt`` command (also under ``mpiexec ... python -m mpi4py -m lt``)."""

import sys

from .cli import main

sys.exit(main())
