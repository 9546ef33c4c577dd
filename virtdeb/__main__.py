import sys

from virtdeb.cli import main

sys.exit(main())
