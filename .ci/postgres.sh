#!/usr/bin/env bash
# Runs the PgStore tests against a PostgreSQL cluster of its own on loopback:
# installs PostgreSQL from the distribution's packages if missing, creates the
# cluster with the distribution's cluster tools (initdb refuses root; they run it
# as the postgres user), starts it, creates a database and a user with a
# password, runs the tests, and stops the cluster on exit if it started it.
#
#   bash .ci/postgres.sh              the Postgres tests
#   bash .ci/postgres.sh CMD ARGS...  CMD instead, with JOBSAFE_PG_URL and
#                                     JOBSAFE_PG_RESTART set (e.g. a bench)
#
# Idempotent: a second run reuses the cluster, the user and the database.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=${JOBSAFE_PG_CLUSTER:-jobsafe}
port=${JOBSAFE_PG_PORT:-54329}
user=jobsafe
password=jobsafe-test
database=jobsafe

if ! command -v pg_createcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "== installing PostgreSQL"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)

if ! pg_lsclusters --no-header | awk '{print $1 "/" $2}' | grep -qx "$version/$cluster"; then
    echo "== creating cluster $version/$cluster on 127.0.0.1:$port"
    pg_createcluster "$version" "$cluster" --port "$port" --start-conf manual \
        -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
fi
# Loopback only; room for the multi-process tests' connections.
cat >"/etc/postgresql/$version/$cluster/conf.d/jobsafe.conf" <<CONF
listen_addresses = '127.0.0.1'
max_connections = 200
CONF

started=
stop_cluster() {
    if [[ -n "$started" ]]; then
        echo "== stopping cluster $version/$cluster"
        pg_ctlcluster "$version" "$cluster" stop -m fast || true
    fi
}
trap stop_cluster EXIT

if ! pg_lsclusters --no-header | awk -v c="$cluster" '$2 == c {print $4}' | grep -qx online; then
    echo "== starting cluster $version/$cluster"
    pg_ctlcluster "$version" "$cluster" start
    started=yes
fi

as_postgres() {
    runuser -u postgres -- psql --port "$port" --quiet --no-psqlrc -v ON_ERROR_STOP=1 "$@"
}
as_postgres --dbname postgres <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$user') THEN
        CREATE ROLE $user LOGIN PASSWORD '$password';
    END IF;
END
\$\$;
SQL
if [[ -z $(as_postgres --dbname postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'") ]]; then
    as_postgres --dbname postgres -c "CREATE DATABASE $database OWNER $user"
fi

export JOBSAFE_PG_URL="postgres://$user:$password@127.0.0.1:$port/$database"
# Immediate: the server stops as if it crashed and recovers from its WAL.
export JOBSAFE_PG_RESTART="pg_ctlcluster $version $cluster restart -m immediate"
echo "== JOBSAFE_PG_URL=postgres://$user:***@127.0.0.1:$port/$database"

if [[ $# -gt 0 ]]; then
    "$@"
    exit
fi
cargo test --features postgres --test pg_store
cargo test --features postgres --test pg_waits
cargo test --features postgres --test pg_restart -- --nocapture
cargo test --features postgres --test conformance --test model --test ambiguity_lock --test ambiguity_jobs \
    --test lock_multiprocess --test ledger_multiprocess -- pg
