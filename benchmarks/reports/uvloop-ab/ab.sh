#!/usr/bin/env bash
# alternate: services on uvloop (new) and on asyncio (old), the client the same. "old" needed a temporary switch in
# shared.runtime.run (asyncio.run when AB_ASYNCIO is set), which the committed code does not have.
out=${1:-/tmp/ab-uvloop}; mkdir -p $out
cd /work/main
for i in 1 2; do for v in new old; do
  ./infra/platform stop >/dev/null 2>&1
  if [[ $v == old ]]; then AB_ASYNCIO=1 ./infra/platform up > $out/up-$v-$i.log 2>&1; else ./infra/platform up > $out/up-$v-$i.log 2>&1; fi
  sleep 5
  /root/.cache/ferry/venv/bin/python "$(dirname "$0")/abloop.py" $v-$i $out
done; done
./infra/platform stop >/dev/null 2>&1
