#!/usr/bin/env bash
# A/B: alternate the stash-less tree (new) and HEAD (old) via git worktree
set -u
export PATH=/root/.cache/ferry/venv/bin:$PATH
rm -rf /tmp/old && git -C /work/main worktree add -f /tmp/old HEAD >/dev/null 2>&1
for round in ${ROUNDS:-1 2}; do
  for side in new old; do
    root=/work/main; [[ $side == old ]] && root=/tmp/old
    sed "s|^root=/work/main|root=$root|" /tmp/probe/prof.sh > /tmp/probe/prof-$side.sh; chmod +x /tmp/probe/prof-$side.sh
    echo "== $side $round"; timeout 400 /tmp/probe/prof-$side.sh /tmp/ab/$side-$round "$@" 2>&1 | grep -E "throughput|median|cpu"
  done
done
