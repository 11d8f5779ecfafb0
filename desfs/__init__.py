"""desfs: mount DESaccess job output (a tree of nginx `/json` listings) as a read-only filesystem."""

__version__ = "0.1.0"
