# syntax=docker/dockerfile:1
#
# The ptray cluster image: Ray + CUDA 12.8 base, a CUDA build of torch, DeepSpeed, the MLflow
# server's extras, and ptray itself. cluster.yaml runs every node (head and GPU workers) in it.
#
# Build and push (x86_64; AWS_ACCOUNT_ID is the same placeholder as in cluster.yaml):
#   aws ecr get-login-password --region us-west-2 \
#     | docker login --username AWS --password-stdin AWS_ACCOUNT_ID.dkr.ecr.us-west-2.amazonaws.com
#   docker build --platform linux/amd64 -t AWS_ACCOUNT_ID.dkr.ecr.us-west-2.amazonaws.com/ptray:latest .
#   docker push AWS_ACCOUNT_ID.dkr.ecr.us-west-2.amazonaws.com/ptray:latest
# Pre-compile DeepSpeed's Adam ops into the image instead of JIT-building them on each node:
#   docker build --build-arg DS_BUILD_FUSED_ADAM=1 --build-arg DS_BUILD_CPU_ADAM=1 ...
#
# Base image: rayproject/ray:<ray version>-py311-cu128.
#  * Keep <ray version> equal to the Ray you run `ray up` / `ray job submit` with, i.e. the
#    `ray` pinned in your local environment; tests/test_cluster_config.py fails when the
#    major.minor here differs from the installed `ray.__version__` (match the patch too).
#  * -cu128 images are built on nvidia/cuda:12.8.x-devel, so nvcc is there for DeepSpeed's
#    JIT op builds. They need an NVIDIA driver >= 570 on the host (see the ImageId note in
#    cluster.yaml). Other published CUDA variants: -cu121 (alias -gpu), -cu124, -cu126 ...
#  * NOT rayproject/ray-ml: those images are discontinued (deprecated since Ray 2.31, no
#    longer published since 2.50), so torch and friends are installed here instead.
#  * Python 3.11 (py311), matching the project's development environment.
FROM rayproject/ray:2.60.0-py311-cu128

# torch wheels built for the same CUDA major.minor as the base image's toolkit: DeepSpeed
# refuses to JIT-build ops when nvcc and torch.version.cuda disagree on the major version.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# A100 (8.0), A10G (8.6), H100 (9.0): the GPUs of cluster.yaml's node types (+ H100).
# Limits DeepSpeed/torch extension builds to these architectures (a GPU-less docker build
# needs it too, as there is no GPU to detect).
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0"
# 0 = JIT-build on first use (cached, see TORCH_EXTENSIONS_DIR); 1 = compile at image build.
ARG DS_BUILD_FUSED_ADAM=0
ARG DS_BUILD_CPU_ADAM=0

# TORCH_EXTENSIONS_DIR: where torch.utils.cpp_extension (and so DeepSpeed) keeps JIT-built
# ops. A fixed path under the ray user's home instead of a per-process default, so every
# trial on a node reuses the first build; cluster.yaml bind-mounts a host directory here so
# the builds also survive a re-created container.
ENV TORCH_EXTENSIONS_DIR=/home/ray/.cache/torch_extensions \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    HF_HOME=/home/ray/.cache/huggingface \
    PYTHONUNBUFFERED=1

RUN mkdir -p "${TORCH_EXTENSIONS_DIR}" "${HF_HOME}" /home/ray/mlflow \
 && python -c "import ray; print(ray.__version__)" > /home/ray/.base_ray_version

# 1. CUDA torch FIRST, from the CUDA-specific index, so that `pip install -e .` below finds
#    torch already satisfied and never swaps in another build. Fail the build if it is CPU-only.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch \
 && python -c "import torch; assert torch.version.cuda, 'CPU-only torch installed'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# 2. DeepSpeed against that torch (no build isolation: its setup.py must see the torch above).
RUN pip install --no-cache-dir --no-build-isolation "deepspeed>=0.15"

# 3. Head-side extras for the MLflow server in cluster.yaml: psycopg2 for a Postgres backend
#    store, boto3 for the S3 artifact destination (already in the Ray base image; kept explicit).
RUN pip install --no-cache-dir psycopg2-binary boto3

# 4. ptray's dependencies, in their own layer keyed on pyproject.toml only, so code changes
#    don't reinstall transformers & co.
WORKDIR /home/ray/ptray
COPY --chown=ray:users pyproject.toml README* ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/ptray-requirements.txt \
 && pip install --no-cache-dir -r /tmp/ptray-requirements.txt \
 && rm /tmp/ptray-requirements.txt

# 5. The project itself (the cluster runs `ptray tune experiments/...`).
COPY --chown=ray:users ptray/ ./ptray/
COPY --chown=ray:users experiments/ ./experiments/
RUN pip install --no-cache-dir -e . \
 && python -c "import ray; want = open('/home/ray/.base_ray_version').read().strip(); assert ray.__version__ == want, f'ray changed from {want} to {ray.__version__} while installing ptray'" \
 && python -c "import torch; assert torch.version.cuda, 'torch was replaced by a CPU-only build'" \
 && python -c "import ptray, mlflow, transformers; print('ptray image OK')"

# Ray's cluster launcher runs its commands with the container's working directory.
WORKDIR /home/ray
