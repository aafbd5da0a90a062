#!/usr/bin/env bash
# Installs Debian's slurm-wlm and munge for the single-node SLURM tests (tests/slurm_node.py), where it can:
# as root, with apt-get. Anywhere else it says why it leaves them out, and those tests skip.
set -u
if command -v slurmctld >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_slurm: not root on a Debian-like system; the SLURM tests will skip"
    exit 0
fi
echo "install_slurm: installing slurm-wlm and munge from Debian's packages (about 15 s)"
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >/tmp/install_slurm.log 2>&1; then
    echo "install_slurm: apt-get failed (log: /tmp/install_slurm.log); the SLURM tests will skip"
fi
exit 0
