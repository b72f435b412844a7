#!/bin/bash
# Build, on a machine with PyPI, a bundle that lets a lent GPU machine with no network run
# `benchmarks/generation.py --gpu`: vLLM 0.25.0 (the release built for torch 2.11 + CUDA 13, the
# torch that the lent H100/H200 image has) and the packages of vLLM's that the image lacks,
# installed into one site folder, zstd-compressed and split into parts of under 60 MB (the
# device tool carries at most 64 MiB per call). Parts go to .gpu/p1 .. .gpu/pN (git-ignored;
# add `/.gpu/` to .git/info/exclude). benchmarks/gpu/run_on_device.sh reassembles them there.
#
# Left out on purpose (large GPU kernel packages vLLM only uses on request, or present on the
# image): torch, torchvision, torchaudio, torchcodec, flashinfer (vLLM's sampler must then be
# told: VLLM_USE_FLASHINFER_SAMPLER=0, set by run_on_device.sh), tilelang, cutlass-dsl,
# quack-kernels, tokenspeed-mla, humming-kernels, PyNvVideoCodec, fastsafetensors,
# nvidia-cudnn-frontend, numba, opencv; and from the vLLM wheel the FA2 kernels (FA3 serves
# Hopper), deep_gemm, fmha_sm100, flashmla, qutlass and the Rust front end.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/vllm-bundle}
PY=${PYTHON:-python3}
mkdir -p "$WORK" && cd "$WORK"
PLATFORMS=""
for n in 35 34 31 28 27 26 24 17; do PLATFORMS="$PLATFORMS --platform manylinux_2_${n}_x86_64"; done
PLATFORMS="$PLATFORMS --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
DOWNLOAD="$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS"

cat > requirements.in <<'REQ'
vllm==0.25.0
pydantic
REQ
# vLLM pins apache-tvm-ffi 0.1.9, but the xgrammar it resolves to needs 0.1.11's load_lib_module
# (seen on the H100: TypeError ... 'extra_lib_paths'); the override takes 0.1.11.
cat > overrides.txt <<'OVR'
apache-tvm-ffi==0.1.11
torch; sys_platform == 'never'
torchaudio; sys_platform == 'never'
torchvision; sys_platform == 'never'
torchcodec; sys_platform == 'never'
flashinfer-python; sys_platform == 'never'
flashinfer-cubin; sys_platform == 'never'
tilelang; sys_platform == 'never'
nvidia-cutlass-dsl; sys_platform == 'never'
quack-kernels; sys_platform == 'never'
tokenspeed-mla; sys_platform == 'never'
humming-kernels; sys_platform == 'never'
pynvvideocodec; sys_platform == 'never'
fastsafetensors; sys_platform == 'never'
nvidia-cudnn-frontend; sys_platform == 'never'
numba; sys_platform == 'never'
opencv-python-headless; sys_platform == 'never'
OVR
$PY -m pip install -q uv
$PY -m uv pip compile requirements.in --override overrides.txt --python-version 3.12 \
    --python-platform x86_64-manylinux_2_35 --only-binary :all: -o resolved.txt -q
# Packages the lent image already has (device/KINDS.md lists them) are not carried.
$PY - "$ROOT" <<'PYCODE'
import pathlib, sys
on_image = {"accelerate", "aiohappyeyeballs", "aiohttp", "aiosignal", "annotated-doc", "anyio", "attrs", "certifi",
            "charset-normalizer", "click", "cloudpickle", "einops", "filelock", "frozenlist", "fsspec", "grpcio", "h11",
            "hf-xet", "httpcore", "httpx", "huggingface-hub", "idna", "jinja2", "markdown-it-py", "markupsafe", "mdurl",
            "multidict", "ninja", "numpy", "packaging", "pillow", "prometheus-client", "propcache", "protobuf", "psutil",
            "py-cpuinfo", "pygments", "pyyaml", "regex", "requests", "rich", "safetensors", "sentencepiece", "setuptools",
            "shellingham", "six", "tiktoken", "tokenizers", "tqdm", "transformers", "triton", "typer",
            "typing-extensions", "urllib3", "uvloop", "yarl", "googleapis-common-protos"}
lines = [l.strip() for l in open("resolved.txt") if l.strip() and not l.lstrip().startswith("#")]
carried = [l for l in lines if l.split("==")[0].lower() not in on_image]
pathlib.Path("carried.txt").write_text("\n".join(carried) + "\n")
print(f"{len(lines)} resolved, {len(carried)} carried")
PYCODE
rm -rf wheels site && mkdir -p wheels
$DOWNLOAD -d wheels -r carried.txt
$DOWNLOAD -d zstd zstandard==0.25.0
$PY -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
    --target site wheels/*.whl
rm -rf site/vllm/vllm-rs site/vllm/third_party/deep_gemm site/vllm/third_party/fmha_sm100 \
       site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so site/vllm/_flashmla_C.abi3.so \
       site/vllm/_flashmla_extension_C.abi3.so site/vllm/_qutlass_C.abi3.so \
       site/vllm/entrypoints/serve/instrumentator/static
tar -C site -cf - . | zstd -12 -T0 -q -f -o site.tar.zst
rm -f site.part.*
split -b 55M -d site.tar.zst site.part.
rm -rf "$ROOT/.gpu" && mkdir -p "$ROOT/.gpu"
i=0
for part in site.part.*; do
  i=$((i + 1)); mkdir -p "$ROOT/.gpu/p$i"; cp "$part" "$ROOT/.gpu/p$i/"
done
cp zstd/*.whl "$ROOT/.gpu/p$i/"
sha256sum site.tar.zst | cut -d' ' -f1 > "$ROOT/.gpu/p$i/site.sha256"
cp "$ROOT/benchmarks/gpu/run_on_device.sh" "$ROOT/.gpu/p$i/"
echo "bundle: $(du -h site.tar.zst | cut -f1) in $i parts under $ROOT/.gpu (carry .gpu/p1 .. .gpu/p$i, one per call)"
