"""The `libvirt` method: bounded read-only calls to a launcher's daemon.

The domain XML it returns, or the launcher's domain file when the daemon cannot answer.
"""
