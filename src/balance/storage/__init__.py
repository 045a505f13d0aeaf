"""Storage adapters behind one interface: SQLite (embedded default) and MariaDB."""
