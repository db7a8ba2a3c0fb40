"""wnodes: run each batch job in a per-job VM on an image the site chooses."""

__version__ = "0.1.0"
