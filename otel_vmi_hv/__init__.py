"""otel-vmi-hv: reports, per running KubeVirt VMI, the hypervisor its libvirt domain uses."""

__version__ = "0.1.0"
