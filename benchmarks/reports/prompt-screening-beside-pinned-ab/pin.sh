#!/bin/bash
# keeps the worker (and its EngineCore child) on core 0 and the safety service on core 1 while a bench runs
while true; do
  for pid in $(pgrep -f "services.worker.main"); do
    taskset -a -cp 0 $pid > /dev/null 2>&1
    for child in $(pgrep -P $pid); do taskset -a -cp 0 $child > /dev/null 2>&1; done
  done
  for pid in $(pgrep -f "services.safety.main"); do taskset -a -cp 1 $pid > /dev/null 2>&1; done
  sleep 1
done
