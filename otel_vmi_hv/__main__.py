import sys

from otel_vmi_hv.cli import main

sys.exit(main())
