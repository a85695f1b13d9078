#!/bin/sh
# Issues a cluster's certificates with `wasmos cert issue`: the cluster CA, one certificate per
# master (m1, m2, ...), agent certificates (agent-1, agent-2, ...), an operator's (admin) with
# its client.toml, and the key every master seals tasks' secrets with. Run it once, on a
# trusted machine; what exists already is kept, so it is safe to run again to add agents.
#
#   deploy/issue-certs.sh PKI_DIR MASTERS [AGENTS]
#     PKI_DIR  where ca.pem, ca.key and NAME.pem/NAME.key go
#     MASTERS  every master's IP:PORT, comma-separated, in --id order (m1 is the first)
#     AGENTS   how many agent certificates (default 2)
#
# Then copy to each host only what it needs (deploy/README.md): ca.pem to all, mN.pem/mN.key
# and secrets.key to master N, agent-N.pem/agent-N.key to agent N. ca.key stays here.
# WASMOS names the wasmos binary (default: the one on PATH); WASMOS_PKI_OWNER, if set, is
# the user that gets the files (the container image's `wasmos`).
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 PKI_DIR MASTERS [AGENTS]   (e.g. $0 ./pki 10.0.0.1:7433,10.0.0.2:7433,10.0.0.3:7433 2)" >&2
    exit 2
fi
wasmos=${WASMOS:-wasmos}
pki=$1
masters=$2
agents=${3:-2}
mkdir -p "$pki"

n=0
for addr in $(echo "$masters" | tr ',' ' '); do
    n=$((n + 1))
    "$wasmos" cert issue --pki "$pki" --master "m$n"
done
i=1
while [ "$i" -le "$agents" ]; do
    "$wasmos" cert issue --pki "$pki" --agent "agent-$i"
    i=$((i + 1))
done
"$wasmos" cert issue --pki "$pki" --operator admin

if [ ! -f "$pki/secrets.key" ]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$pki/secrets.key")
fi

# The operator's client config: the first master, and the others to find the leader among.
first=${masters%%,*}
{
    echo "master = \"$first\""
    echo "masters = [$(echo "$masters" | sed 's/\([^,]*\)/"\1"/g; s/,/, /g')]"
    echo 'ca = "ca.pem"'
    echo 'cert = "admin.pem"'
    echo 'key = "admin.key"'
} > "$pki/client.toml"

if [ -n "${WASMOS_PKI_OWNER:-}" ]; then
    chown -R "$WASMOS_PKI_OWNER" "$pki"
fi
echo "issued into $pki: ca, $n masters, $agents agents, operator admin ($pki/client.toml)"
