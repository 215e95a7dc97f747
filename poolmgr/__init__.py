"""poolmgr: pool-account lifecycle manager for grid computing sites."""

__version__ = "0.1.0"
