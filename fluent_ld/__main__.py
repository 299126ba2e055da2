import sys

from fluent_ld.cli import main

sys.exit(main())
