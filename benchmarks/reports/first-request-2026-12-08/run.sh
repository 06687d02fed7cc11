set -x
base=$PWD
here=$(cd "$(dirname "$0")" && pwd)
# Run from a directory holding two clones of ferry, before/ (without the change) and after/ (with it), each started and
# stopped once beforehand so that both find their state (database, topics) made. Rounds alternate the arms' order.
for round in 1 2 3; do
  arms="before after"; [ $((round % 2)) = 0 ] && arms="after before"
  for arm in $arms; do
    cd "$base/$arm"
    ./infra/platform up > "$base/up-$arm-$round.log" 2>&1
    echo "== round $round, $arm"
    PYTHONPATH="$base/$arm" /root/.cache/ferry/venv/bin/python "$here/first_request.py" "$base/$arm"
    ./infra/platform stop > /dev/null 2>&1
  done
done
