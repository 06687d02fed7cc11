set -x
base=$PWD
here=$(cd "$(dirname "$0")" && pwd)
# Run from a directory holding two clones of ferry, before/ (without the change) and after/ (with it).
for arm in before after; do
  for disk in cold warm; do
    cd "$base/$arm"
    [ $disk = cold ] && rm -rf /tmp/torchinductor_root
    s=$(date +%s); ./infra/platform up > "$base/up-$arm-$disk.log" 2>&1; echo "$arm $disk up took $(( $(date +%s)-s )) s"
    grep -h "engine for .* ready" .state/logs/worker-*.log | tail -2
    /root/.cache/ferry/venv/bin/python "$here/first_logprobs.py" .state/dev-api-key
    ./infra/platform stop > /dev/null 2>&1
    : > .state/logs/worker-smollm2-135m-instruct.log; : > .state/logs/worker-tiny-random.log
  done
done
