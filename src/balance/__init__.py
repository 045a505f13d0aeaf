"""Balance service: holds, captures, credits, debits and transfers on a parent/child account tree."""

__version__ = "0.1.0"
