from virtdeb.cli import main
import sys

sys.exit(main())
