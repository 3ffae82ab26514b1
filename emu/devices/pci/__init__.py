"""PCI: the host bridge on configuration mechanism #1 (host.py) and the configuration space of a
function (function.py)."""
