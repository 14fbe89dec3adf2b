"""The `proc` method: QEMU processes in the host's /proc and their accelerator.

See docs/proc-detection.md.
"""
