import sys

from analysis.probe.cli import main

sys.exit(main())
