# vLLM's engine in process under glibc's malloc, gperftools' tcmalloc (Debian's libtcmalloc-minimal4, as vLLM's CPU
# guide asks for) and jemalloc (libjemalloc2), preloaded; two rounds, both models. Writes run.log's RESULT lines.
here=$(cd "$(dirname "$0")" && pwd)
TC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
JE=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
for round in 1 2; do
  for model in tiny-random smollm2-135m-instruct; do
    for v in glibc tcmalloc jemalloc; do
      case $v in
        glibc) pre="";;
        tcmalloc) pre=$TC;;
        jemalloc) pre=$JE;;
      esac
      timeout 240 env LD_PRELOAD=$pre VLLM_ENABLE_V1_MULTIPROCESSING=0 /root/.cache/ferry/venv/bin/python \
        "$here/engine_allocator.py" "/root/.cache/ferry/models/$model" $v 2>&1 | grep RESULT
    done
  done
done
