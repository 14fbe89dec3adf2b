import sys

from otel_vmi_hv.cli import entry

sys.exit(entry())
