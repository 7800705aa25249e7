#!/bin/sh
# First start: a cluster in $PGDATA with one password-protected role and database.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  chown postgres /tmp/pwfile
  # Local socket (inside this container only): trust; TCP: the password.
  su postgres -c "$bin/initdb -D '$PGDATA' -U '$POSTGRES_USER' --pwfile=/tmp/pwfile \
    --auth-local=trust --auth-host=scram-sha-256" >/dev/null
  rm -f /tmp/pwfile
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  su postgres -c "$bin/pg_ctl -D '$PGDATA' -o '-c listen_addresses=' -w start" >/dev/null
  su postgres -c "psql -U '$POSTGRES_USER' -d postgres -qc 'create database \"$POSTGRES_DB\"'"
  su postgres -c "$bin/pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
fi
exec su postgres -c "exec $bin/postgres -D '$PGDATA' -c listen_addresses='*'"
