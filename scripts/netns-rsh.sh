#!/bin/sh
# mpirun's remote launcher (plm_rsh_agent) for the network-namespace "hosts" of scripts/multihost-netns.sh: where
# ssh would log into HOST, this enters the namespace named HOST with a hostname of its own and runs the command.
#   netns-rsh.sh HOST COMMAND...
host=$1
shift
exec ip netns exec "$host" unshare --uts sh -c "hostname $host; $*"
