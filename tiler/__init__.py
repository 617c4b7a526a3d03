"""jeo-tiler web service, command line and exports."""

__version__ = "0.1.0"
