"""Air-gapped on-premises AI appliance."""

__version__ = "0.1.0"
