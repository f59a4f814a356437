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
# Logs in only over TLS (a pg_hba rule below), with the same password.
tls_user=jobsafe_tls

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
conf_dir=/etc/postgresql/$version/$cluster

# The server's TLS certificate, issued by a CA made for these tests, for the
# address 127.0.0.1 and no name: the TLS tests reach it as `localhost` to see
# a name refused. Made again only if missing or about to expire.
tls_dir=$conf_dir/tls
if ! openssl x509 -checkend 86400 -noout -in "$tls_dir/server.crt" >/dev/null 2>&1 ||
    [[ ! -s $tls_dir/ca.crt || ! -s $tls_dir/server.key ]]; then
    if ! command -v openssl >/dev/null; then
        echo "== installing openssl"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq openssl >/dev/null
    fi
    echo "== making the test CA and the server's certificate in $tls_dir"
    rm -rf "$tls_dir"
    mkdir -p "$tls_dir"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.crt" -days 3650 -subj "/CN=jobsafe test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$tls_dir/server.key" -out "$tls_dir/server.csr" -subj "/CN=jobsafe test server"
    openssl x509 -req -in "$tls_dir/server.csr" -CA "$tls_dir/ca.crt" -CAkey "$tls_dir/ca.key" \
        -CAcreateserial -out "$tls_dir/server.crt" -days 825 -extfile <(
            printf '%s\n' "subjectAltName=IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth"
        )
    # No more certificates are issued: the CA's key is not kept.
    rm -f "$tls_dir/ca.key" "$tls_dir/server.csr" "$tls_dir/ca.srl"
    chown -R postgres:postgres "$tls_dir"
    chmod 0755 "$tls_dir"
    chmod 0644 "$tls_dir/ca.crt" "$tls_dir/server.crt"
    # The server refuses a key that others may read.
    chmod 0600 "$tls_dir/server.key"
fi

# Loopback only; room for the multi-process tests' connections; TLS with the
# certificate above.
cat >"$conf_dir/conf.d/jobsafe.conf" <<CONF
listen_addresses = '127.0.0.1'
max_connections = 200
ssl = on
ssl_cert_file = '$tls_dir/server.crt'
ssl_key_file = '$tls_dir/server.key'
CONF

# The TLS user may not log in without TLS. Rules are matched in order: this one
# goes first, before the rules that admit everyone on loopback.
if ! grep -q "^hostnossl all $tls_user " "$conf_dir/pg_hba.conf"; then
    sed -i "1i hostnossl all $tls_user all reject" "$conf_dir/pg_hba.conf"
fi

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
else
    # Already running: the settings and rules above take effect on a reload.
    pg_ctlcluster "$version" "$cluster" reload
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
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$tls_user') THEN
        CREATE ROLE $tls_user LOGIN PASSWORD '$password';
    END IF;
END
\$\$;
SQL
if [[ -z $(as_postgres --dbname postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'") ]]; then
    as_postgres --dbname postgres -c "CREATE DATABASE $database OWNER $user"
fi
# The TLS user makes schemas of its own in the database; the first user, a
# member of it, drops them after a test and sees its sessions' TLS state.
as_postgres --dbname postgres <<SQL
GRANT CONNECT, CREATE ON DATABASE $database TO $tls_user;
DO \$\$
BEGIN
    IF NOT pg_has_role('$user', '$tls_user', 'MEMBER') THEN
        GRANT $tls_user TO $user;
    END IF;
END
\$\$;
SQL

export JOBSAFE_PG_URL="postgres://$user:$password@127.0.0.1:$port/$database"
# Immediate: the server stops as if it crashed and recovers from its WAL.
export JOBSAFE_PG_RESTART="pg_ctlcluster $version $cluster restart -m immediate"
export JOBSAFE_PG_TLS_CA=$tls_dir/ca.crt
export JOBSAFE_PG_TLS_USER=$tls_user
echo "== JOBSAFE_PG_URL=postgres://$user:***@127.0.0.1:$port/$database"
echo "== JOBSAFE_PG_TLS_CA=$JOBSAFE_PG_TLS_CA JOBSAFE_PG_TLS_USER=$tls_user"

if [[ $# -gt 0 ]]; then
    "$@"
    exit
fi
cargo test --features postgres --test pg_store
cargo test --features postgres --test pg_waits
cargo test --features postgres --test pg_async
cargo test --features postgres,async --test pg_changes --test pg_within
cargo test --features postgres --test pg_relay -- --nocapture
# A PgStore call of the async face, traced under its caller's span.
cargo test --features postgres --test tracing -- pgstore
cargo test --features postgres --test pg_restart -- --nocapture
cargo test --features postgres --test conformance --test model \
    --test ambiguity_lock --test ambiguity_jobs --test ambiguity_ledger \
    --test lock_multiprocess --test ledger_multiprocess --test schedule --test pipeline_shared -- pg
cargo test --features postgres-tls --test pg_tls -- --nocapture
