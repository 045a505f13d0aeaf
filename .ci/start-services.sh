#!/usr/bin/env bash
# The services the tests need, started on loopback if installed but not answering: MariaDB
# (3306; the MariaDB tests, and the mariadbd/mariadb-install-db binaries the private-server
# tests start themselves). Nothing else: the suite uses no other service. Safe to run any
# number of times; prints one line per service; exit status 1 when MariaDB does not answer.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { for _ in $(seq 60); do up "$1" && return 0; sleep 0.5; done; return 1; }
say() { printf '%-10s %s\n' "$1" "$2"; }

if up 3306; then say mariadb up
elif command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null
  start-stop-daemon --start --oknodo --background --chuid mysql --exec /usr/sbin/mariadbd
  if wait_up 3306; then say mariadb started; else say mariadb "failed to start"; exit 1; fi
else say mariadb "not installed (apt-get install mariadb-server)"; exit 1; fi
exit 0
