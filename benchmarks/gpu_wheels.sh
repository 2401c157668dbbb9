#!/bin/bash
# The packages varrl needs that the lent GPU machines' image lacks (the OCR reward's engine and
# its helpers; their image has torch, transformers, peft, onnxruntime, opencv, numpy, ...), as
# wheels for its Python 3.12 on x86-64, into .whl/ (git-ignored). Run once, here, before a
# session's device call that carries .whl: see benchmarks/gpu_check.sh. About 34 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  'rapidocr==3.10.0' 'rapidfuzz==3.14.6' 'pyclipper==1.4.0' 'shapely==2.2.0' 'omegaconf==2.4.0' 'colorlog==6.12.0'
ls -l .whl
