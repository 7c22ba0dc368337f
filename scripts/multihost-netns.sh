#!/usr/bin/env bash
# Data parallelism across two "machines" on this one: two network namespaces (milan-a, milan-b, each with its own
# hostname) joined by a veth pair (10.77.0.1 and 10.77.0.2, addresses local to this machine), mpirun started in
# milan-a with --host milan-a,milan-b, the remote rank started through scripts/netns-rsh.sh (what ssh does on a real
# cluster) and every byte between the ranks over TCP. Runs the data-parallel equivalence test of the suite
# (1 process × batch B against 2 ranks × B/2) through that launcher, then removes the namespaces, the veth pair and
# /etc/netns/milan-{a,b} whatever happens. Needs root, iproute2 and util-linux (unshare), Open MPI, a release build
# with tests (`swift build -c release --build-tests`) and Debian's dataset-fashion-mnist.
#
# On a real cluster the same command is
#   mpirun --hostfile hosts -np N --mca btl self,tcp,vader milan pretrain --data-dir /shared/imagenet/train ...
# with `hosts` listing one machine per line (`node1 slots=8`), passwordless ssh between them, the same milan build
# and teacher file on every machine, and the data folder and output folder on a filesystem every machine sees
# (NFS, Lustre): every rank reads the images of its share of each batch and the checkpoint when resuming; rank 0
# alone writes checkpoints and log.jsonl. Per-host data copies work too if their paths are identical.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "multihost-netns: needs root (ip netns)" >&2; exit 1; }
HERE=$(pwd)

cleanup() {
  ip netns del milan-a 2>/dev/null || true
  ip netns del milan-b 2>/dev/null || true
  rm -rf /etc/netns/milan-a /etc/netns/milan-b
}
trap cleanup EXIT
cleanup

ip netns add milan-a
ip netns add milan-b
ip link add milan-va type veth peer name milan-vb
ip link set milan-va netns milan-a
ip link set milan-vb netns milan-b
ip -n milan-a addr add 10.77.0.1/24 dev milan-va
ip -n milan-b addr add 10.77.0.2/24 dev milan-vb
for ns in milan-a milan-b; do ip -n "$ns" link set lo up; done
ip -n milan-a link set milan-va up
ip -n milan-b link set milan-vb up
# `ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts: the two names resolve in both namespaces.
mkdir -p /etc/netns/milan-a /etc/netns/milan-b
printf '127.0.0.1 localhost\n10.77.0.1 milan-a\n10.77.0.2 milan-b\n' | tee /etc/netns/milan-a/hosts \
  > /etc/netns/milan-b/hosts

# The tests start `$MILAN_TEST_MPIRUN -np 2 milan ...` instead of a local mpirun.
export MILAN_TEST_MPIRUN="ip netns exec milan-a unshare --uts sh -c 'hostname milan-a; exec \"\$@\"' sh \
mpirun --allow-run-as-root --host milan-a,milan-b --mca plm_rsh_agent $HERE/scripts/netns-rsh.sh \
--mca btl self,tcp --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24"
swift test -c release --skip-build \
  --filter 'DataParallelTests/(pretrainingOnTwoRanksEqualsOneProcess|finetuningOnTwoRanksEqualsOneProcess)' 2>&1 \
  | grep -E '^ok|✔|✘|error' 
