#!/usr/bin/env bash
# Train Sift's reranker or late-interaction model on the lent GPU machine (see bench/TRAINING.md).
#
# The device tool carries at most 64 MiB a call, so the bundled MiniLM (91 MB) goes in two parts
# and the training data (28 MB) with the run itself:
#
#   here:   scripts/train_gpu.sh pack            # .gpu-train/ (data, + EXAMPLES=file if set), .gpu-base0/, .gpu-base1/
#   device: scripts/train_gpu.sh recv 0          # carry [".gpu-base0"]
#   device: scripts/train_gpu.sh recv 1          # carry [".gpu-base1"], within 30 s of the last call
#   device: scripts/train_gpu.sh run late-interaction --steps 1500 --batch 64 --teacher hybrid ...
#                                                # carry [".gpu-train"]; any `sift train` option after the kind
#   here:   scripts/train_gpu.sh unpack <files_at> <model folder>
#
# `run` trains with bf16 autocast on CUDA and writes to $OUT: the weights as fp16 safetensors in
# 15 MB parts, everything else (configs, tokenizer, run log, 1_Dense) in rest.tar.gz, and the
# run's JSON summary; `unpack` joins them back into a model folder with fp32 weights.
# PY picks the Python (default python3; here use .venv/bin/python to try `run` on the CPU).
set -euo pipefail
PY=${PY:-python3}
cmd=${1:-}
shift || true
case "$cmd" in
pack)
    shared=${SIFT_SHARED_DIR:-../shared}
    base=$(.venv/bin/python -c "from core.training.common import base_model_dir; print(base_model_dir())")
    rm -rf .gpu-train .gpu-base0 .gpu-base1 .gpu-split
    mkdir -p .gpu-train .gpu-split .gpu-base0 .gpu-base1
    cp "$shared"/train/*.gz "$shared"/train/README.md .gpu-train/
    if [ -n "${EXAMPLES:-}" ]; then cp "$EXAMPLES" .gpu-train/examples.jsonl.gz; fi
    tar -C "$base" -cf .gpu-split/minilm.tar --exclude=./README.md .
    (cd .gpu-split && split -b 46M -d -a 2 minilm.tar part)
    mv .gpu-split/part00 .gpu-base0/part
    mv .gpu-split/part01 .gpu-base1/part
    rm -rf .gpu-split
    du -sh .gpu-train .gpu-base0 .gpu-base1
    ;;
recv)
    mkdir -p /tmp/sift-gpu
    if [ "$1" = 0 ]; then rm -f /tmp/sift-gpu/minilm.tar; fi
    cat ".gpu-base$1/part" >> /tmp/sift-gpu/minilm.tar
    ls -l /tmp/sift-gpu/minilm.tar
    ;;
run)
    kind=$1
    shift
    out=${OUT:?OUT must name the folder whose files come back}
    work=${WORK:-/tmp/sift-gpu}
    rm -rf "$work/base" "$work/out"
    mkdir -p "$work/base"
    tar -C "$work/base" -xf "$work/minilm.tar"
    data=(--data .gpu-train)
    if [ -f .gpu-train/examples.jsonl.gz ]; then data=(--examples .gpu-train/examples.jsonl.gz); fi
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
    PYTHONUNBUFFERED=1 "$PY" -m app.cli_train train "$kind" --base "$work/base" "${data[@]}" --out "$work/out" "$@" \
        --json | tee "$out/summary.json"
    "$PY" - "$work/out" "$out" <<'EOF'
import sys, tarfile
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
w = {k: v.half().contiguous() for k, v in load_file(str(src / "model.safetensors")).items()}
save_file(w, str(dst / "model.fp16.safetensors"))
data = (dst / "model.fp16.safetensors").read_bytes()
(dst / "model.fp16.safetensors").unlink()
part = 15 * 1024 * 1024
for i in range(0, len(data), part):
    (dst / f"weights.part{i // part:02d}").write_bytes(data[i:i + part])
with tarfile.open(dst / "rest.tar.gz", "w:gz") as t:
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if not p.is_file() or rel.parts[0].startswith("checkpoint-") or rel.parts[0] == "mining-kb":
            continue
        if str(rel) != "model.safetensors":  # the encoder weights travel as the fp16 parts
            t.add(p, arcname=str(rel))
print("wrote", sorted(x.name for x in dst.iterdir()))
EOF
    ;;
unpack)
    files=$1
    dest=$2
    mkdir -p "$dest"
    .venv/bin/python - "$files" "$dest" <<'EOF'
import sys, tarfile
from pathlib import Path
from safetensors.torch import load, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
data = b"".join(p.read_bytes() for p in sorted(src.glob("weights.part*")))
save_file({k: v.float().contiguous() for k, v in load(data).items()}, str(dst / "model.safetensors"))
with tarfile.open(src / "rest.tar.gz") as t:
    t.extractall(dst, filter="data")
print("unpacked into", dst)
EOF
    ;;
*)
    sed -n '2,19p' "$0"
    exit 2
    ;;
esac
