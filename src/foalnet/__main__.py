import sys

from foalnet.cli import main

sys.exit(main())
