"""The shard directory: where shards live, which node owns which, and the rare account moves.

One database for the whole fleet (``BALANCE_DIRECTORY_URL``: MariaDB; by default a SQLite
file in the data directory). ``records`` has the rows and the port, ``sql`` the statements
both adapters share, ``sqlite`` and ``mariadb`` the adapters, ``operator`` the CLI commands.
"""
