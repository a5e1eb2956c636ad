import sys

from analysis.attention.cli import main

sys.exit(main())
