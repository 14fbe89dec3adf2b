"""How a VMI's hypervisor type is learnt.

From /proc (`proc/`) or the launcher's libvirt (`libvirt/`), asked in the order `order` sets.
"""
