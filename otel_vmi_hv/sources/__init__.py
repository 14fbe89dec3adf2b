"""Where the list of VMIs to report comes from: the Kubernetes API, or a libvirt daemon alone."""
